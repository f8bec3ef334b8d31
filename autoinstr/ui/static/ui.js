/* autoinstr web UI: draws the charts of each page with Apache ECharts (shipped beside this file) from the
 * page's JSON block (#page-data). Text from spans only ever reaches the DOM through textContent, ECharts'
 * canvas, or esc() in tooltips: never as markup. */
(function () {
  'use strict';

  var PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7',
                 '#9c755f', '#3b8686', '#8f6adb', '#d4a017', '#2f9e44', '#c92a2a', '#1971c2', '#e8590c'];
  var charts = [];

  function esc(value) {
    return String(value === null || value === undefined ? '' : value)
      .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;').replace(/'/g, '&#39;');
  }

  function color(service) {
    var h = 2166136261;
    var s = String(service);
    for (var i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 16777619) >>> 0;
    }
    return PALETTE[h % PALETTE.length];
  }

  function fmtMs(v) {
    if (v === null || v === undefined || isNaN(v)) { return '–'; }
    if (v >= 1000) { return (v / 1000).toFixed(2) + ' s'; }
    if (v >= 100) { return v.toFixed(0) + ' ms'; }
    if (v >= 10) { return v.toFixed(1) + ' ms'; }
    if (v >= 1) { return v.toFixed(2) + ' ms'; }
    return v.toFixed(3) + ' ms';
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function init(node) {
    var chart = echarts.init(node, null, {renderer: 'canvas'});
    charts.push(chart);
    return chart;
  }

  function pairs(t, values) {
    var out = [];
    for (var i = 0; i < t.length; i++) { out.push([t[i], values ? values[i] : null]); }
    return out;
  }

  function axisTooltip(unit) {
    return {
      trigger: 'axis',
      formatter: function (items) {
        if (!items.length) { return ''; }
        var lines = [esc(new Date(items[0].value[0]).toLocaleString())];
        items.forEach(function (it) {
          var v = it.value[1];
          var shown = v === null || v === undefined ? '–' : (unit === 'ms' ? fmtMs(v) : (+v).toFixed(2) + unit);
          lines.push(it.marker + esc(it.seriesName) + ': <b>' + esc(shown) + '</b>');
        });
        return lines.join('<br>');
      }
    };
  }

  function timeAxis(t) {
    var axis = {type: 'time', axisLabel: {hideOverlap: true}};
    if (t.length) { axis.min = t[0]; axis.max = t[t.length - 1]; }
    return axis;
  }

  function timeChart(node, t, series, unit, yName) {
    var chart = init(node);
    chart.setOption({
      animation: false,
      grid: {left: 56, right: 24, top: 36, bottom: 28},
      legend: {type: 'scroll', top: 0, left: 72, right: 8},
      tooltip: axisTooltip(unit),
      xAxis: timeAxis(t),
      yAxis: {type: 'value', name: yName || '', min: 0},
      series: series.map(function (s) {
        return {name: s.name, type: 'line', showSymbol: true, symbolSize: t.length <= 40 ? 5 : 3, connectNulls: false, data: pairs(t, s.data),
                lineStyle: {width: 1.5}, itemStyle: s.color ? {color: s.color} : undefined};
      })
    });
    return chart;
  }

  // ------------------------------------------------------------------------------------ pages

  function servicesPage(data) {
    var names = Object.keys(data.series).sort();
    var parts = {'services-rate': ['rate', '/s', 'req/s'], 'services-errors': ['error_pct', '%', '%'],
                 'services-p50': ['p50_ms', 'ms', 'ms'], 'services-p95': ['p95_ms', 'ms', 'ms'],
                 'services-p99': ['p99_ms', 'ms', 'ms']};
    document.querySelectorAll('[data-chart^="services-"]').forEach(function (node) {
      var p = parts[node.dataset.chart];
      timeChart(node, data.t, names.map(function (n) {
        return {name: n, data: data.series[n][p[0]], color: color(n)};
      }), p[1], p[2]);
    });
  }

  function rateAndLatency(data) {
    var s = data.series || {};
    var rateNode = document.getElementById('chart-rate');
    if (rateNode) {
      var chart = init(rateNode);
      chart.setOption({
        animation: false,
        grid: {left: 56, right: 56, top: 36, bottom: 28},
        legend: {top: 0},
        tooltip: axisTooltip(''),
        xAxis: timeAxis(data.t),
        yAxis: [{type: 'value', name: 'req/s', min: 0}, {type: 'value', name: 'errors %', min: 0, max: 100}],
        series: [
          {name: 'requests/s', type: 'bar', data: pairs(data.t, s.rate), itemStyle: {color: color(data.service)}},
          {name: 'errors %', type: 'line', yAxisIndex: 1, showSymbol: true, symbolSize: data.t.length <= 40 ? 5 : 3, data: pairs(data.t, s.error_pct),
           itemStyle: {color: '#d62728'}}
        ]
      });
    }
    var latNode = document.getElementById('chart-latency');
    if (latNode) {
      timeChart(latNode, data.t, [
        {name: 'p50', data: s.p50_ms, color: '#59a14f'},
        {name: 'p95', data: s.p95_ms, color: '#f28e2b'},
        {name: 'p99', data: s.p99_ms, color: '#e15759'}
      ], 'ms', 'ms');
    }
  }

  function endpointPage(data) {
    rateAndLatency(data);
    var node = document.getElementById('chart-hist');
    if (!node) { return; }
    var h = data.histogram || [];
    var chart = init(node);
    chart.setOption({
      animation: false,
      grid: {left: 56, right: 16, top: 20, bottom: 48},
      tooltip: {trigger: 'axis', formatter: function (items) {
        var b = h[items[0].dataIndex];
        return esc(fmtMs(b.lo_ms) + ' – ' + fmtMs(b.hi_ms)) + ': <b>' + esc(b.count) + '</b>';
      }},
      xAxis: {type: 'category', name: 'latency', nameLocation: 'middle', nameGap: 30,
              data: h.map(function (b) { return fmtMs(b.lo_ms); })},
      yAxis: {type: 'value', name: 'requests', minInterval: 1},
      series: [{type: 'bar', barCategoryGap: '8%', data: h.map(function (b) { return b.count; }),
                itemStyle: {color: color(data.service)}}]
    });
  }

  // ------------------------------------------------------------------------------------ trace

  function tracePage(data) {
    var node = document.getElementById('waterfall');
    var spans = data.spans;
    var n = spans.length;
    var ROW = 22;
    var VISIBLE = Math.min(n, 36);
    var mode = 'critical';
    var selected = -1;
    node.style.height = (VISIBLE * ROW + 56) + 'px';
    var chart = init(node);
    var labelWidth = function () { return Math.max(180, Math.min(420, Math.floor(node.clientWidth * 0.36))); };

    function renderItem(params, api) {
      var i = api.value(0);
      var s = spans[i];
      var a = api.coord([api.value(1), i]);
      var b = api.coord([api.value(2), i]);
      var h = api.size([0, 1])[1];
      var y = a[1] - h / 2;
      var lw = labelWidth();
      var cs = params.coordSys;
      // the same children, in the same order, with every position given, on every render: ECharts reuses
      // the elements of a row between renders
      var band = i === selected ? 'rgba(255, 213, 79, 0.35)' : (i % 2 === 1 ? 'rgba(0, 0, 0, 0.025)' : 'rgba(0, 0, 0, 0)');
      var children = [{type: 'rect', x: 0, y: 0, shape: {x: 0, y: y, width: cs.x + cs.width, height: h},
                       style: {fill: band}, silent: true}];
      var indent = Math.min(s.depth, 24) * 12;
      children.push({type: 'text', x: 8 + indent, y: a[1], silent: true,
                     style: {text: (s.status === 'error' ? '! ' : '') + s.name, fill: s.status === 'error' ? '#c92a2a' : '#222',
                             font: '12px sans-serif', verticalAlign: 'middle', align: 'left', width: lw - indent - 16,
                             overflow: 'truncate'}});
      var base = color(s.service);
      var width = Math.max(2, b[0] - a[0]);
      var opacity = 1;
      if (mode === 'critical') { opacity = s.critical ? 1 : 0.35; }
      if (mode === 'self') { opacity = 0.3 + 0.7 * (s.duration_ms > 0 ? s.self_ms / s.duration_ms : 1); }
      var stroke = null;
      var lineWidth = 0;
      if (mode === 'critical' && s.critical) { stroke = '#111'; lineWidth = 1.5; }
      if (s.status === 'error') { stroke = '#c92a2a'; lineWidth = 2; }
      children.push({type: 'rect', x: 0, y: 0, shape: {x: a[0], y: y + 3, width: width, height: h - 6, r: 2},
                     style: {fill: base, opacity: opacity, stroke: stroke, lineWidth: lineWidth}});
      var label = fmtMs(s.duration_ms) + (mode === 'self' ? ' (self ' + fmtMs(s.self_ms) + ')' : '') +
        (s.service !== (spans[s.parent_row] || {}).service ? '  ' + s.service : '');
      // the duration right of the bar; inside it near the axis' end when the bar is long; else left of it
      var right = cs.x + cs.width;
      var textX = b[0] + 4;
      var align = 'left';
      var fill = '#555';
      if (textX + 140 > right) {
        if (width > 170) { textX = b[0] - 6; align = 'right'; fill = '#111'; } else { textX = a[0] - 4; align = 'right'; }
      }
      children.push({type: 'text', x: textX, y: a[1], silent: true,
                     style: {text: label, fill: fill, font: '11px sans-serif', verticalAlign: 'middle', align: align}});
      return {type: 'group', children: children};
    }

    function rows() {
      return spans.map(function (s, i) { return [i, s.offset_ms, s.offset_ms + s.duration_ms]; });
    }

    chart.setOption({
      animation: false,
      grid: {left: labelWidth(), right: 28, top: 28, bottom: 8},
      tooltip: {trigger: 'item', formatter: function (p) {
        var s = spans[p.value[0]];
        return '<b>' + esc(s.name) + '</b><br>' + esc(s.service) + ' · ' + esc(s.kind) + '<br>duration ' +
          esc(fmtMs(s.duration_ms)) + ', self ' + esc(fmtMs(s.self_ms)) + '<br>starts at +' + esc(fmtMs(s.offset_ms)) +
          (s.critical ? '<br>on the critical path' : '') + (s.status === 'error' ? '<br><b>error</b>' : '');
      }},
      xAxis: {type: 'value', position: 'top', min: 0, max: Math.max(data.duration_ms, 0.001),
              axisLabel: {formatter: function (v) { return fmtMs(v); }}, splitLine: {lineStyle: {color: '#eee'}}},
      yAxis: {type: 'category', inverse: true, show: false, data: spans.map(function (s, i) { return i; })},
      dataZoom: [
        {type: 'slider', yAxisIndex: 0, right: 4, width: 14, top: 28, bottom: 8, startValue: 0,
         endValue: VISIBLE - 1, zoomLock: true, showDetail: false, brushSelect: false, filterMode: 'weakFilter'},
        {type: 'inside', yAxisIndex: 0, zoomOnMouseWheel: false, moveOnMouseWheel: true, moveOnMouseMove: false,
         filterMode: 'weakFilter'}
      ],
      series: [{id: 'waterfall', type: 'custom', renderItem: renderItem, encode: {x: [1, 2], y: 0},
                data: rows(), clip: false}]
    });
    node.dataset.rows = String(n);

    function redraw() {
      chart.setOption({series: [{id: 'waterfall', data: rows()}]});
    }

    function show(i) {
      selected = i;
      redraw();
      var s = spans[i];
      var panel = document.getElementById('span-panel');
      panel.textContent = '';
      var title = el('h2', 'span-title', s.name);
      panel.appendChild(title);
      var meta = el('p', 'span-meta');
      var sw = el('span', 'swatch');
      sw.style.background = color(s.service);
      meta.appendChild(sw);
      meta.appendChild(document.createTextNode(s.service + ' · ' + s.kind + ' · ' + fmtMs(s.duration_ms) +
        ' (self ' + fmtMs(s.self_ms) + ') · starts at +' + fmtMs(s.offset_ms) + (s.critical ? ' · critical path' : '')));
      panel.appendChild(meta);
      panel.appendChild(el('p', 'ids', 'span ' + s.span_id + (s.parent_id ? ' · parent ' + s.parent_id : '')));
      var attrs = s.attributes || {};
      var sql = attrs['db.query.text'];
      if (sql !== undefined) {
        panel.appendChild(el('h3', null, 'SQL (obfuscated)'));
        panel.appendChild(el('pre', 'sql', sql));
      }
      if (s.error) {
        panel.appendChild(el('h3', 'err', 'Error'));
        panel.appendChild(el('p', 'err', (s.error.type || 'error') + (s.error.message ? ': ' + s.error.message : '')));
        if (s.error.stack) { panel.appendChild(el('pre', 'stack', s.error.stack)); }
      }
      panel.appendChild(el('h3', null, 'Attributes'));
      var keys = Object.keys(attrs).sort();
      if (!keys.length) { panel.appendChild(el('p', 'hint', 'none')); }
      var table = el('table', 'attrs');
      keys.forEach(function (k) {
        var tr = el('tr');
        tr.appendChild(el('th', null, k));
        var v = attrs[k];
        tr.appendChild(el('td', null, typeof v === 'string' ? v : JSON.stringify(v)));
        table.appendChild(tr);
      });
      panel.appendChild(table);
      var events = (s.events || []).filter(function (ev) { return ev && ev.name !== 'exception'; });
      if (events.length) {
        panel.appendChild(el('h3', null, 'Events'));
        events.forEach(function (ev) {
          panel.appendChild(el('pre', 'event', ev.name + ' ' + JSON.stringify(ev.attributes || {})));
        });
      }
      panel.dataset.span = s.span_id;
    }

    chart.on('click', function (p) { if (p.value) { show(p.value[0]); } });
    document.querySelectorAll('.modes button').forEach(function (button) {
      button.addEventListener('click', function () {
        mode = button.dataset.mode;
        document.querySelectorAll('.modes button').forEach(function (b) {
          b.classList.toggle('active', b === button);
        });
        redraw();
      });
    });
    var first = 0;
    if (data.selected) {
      for (var i = 0; i < n; i++) { if (spans[i].span_id === data.selected) { first = i; break; } }
      if (first >= VISIBLE) {
        chart.dispatchAction({type: 'dataZoom', dataZoomIndex: 0, startValue: Math.max(0, first - 3),
                              endValue: Math.max(0, first - 3) + VISIBLE - 1});
      }
    }
    if (n) { show(first); }
    window.addEventListener('resize', function () {
      chart.setOption({grid: {left: labelWidth()}});
    });
  }

  // ------------------------------------------------------------------------------------ map

  function mapPage(data) {
    var node = document.getElementById('chart-map');
    if (!node) { return; }
    var chart = init(node);
    var max = 1;
    data.nodes.forEach(function (n) { max = Math.max(max, n.count || 0); });
    var symbols = {service: 'circle', db: 'rect', external: 'triangle'};
    var base = document.body.dataset.base || '';
    chart.setOption({
      animation: false,
      tooltip: {formatter: function (p) {
        if (p.dataType === 'edge') {
          var e = p.data.raw;
          return esc(e.src) + ' → ' + esc(e.dst) + '<br>' + esc(e.count) + ' calls, ' + esc(e.rate.toFixed(2)) +
            '/s<br>errors ' + esc(e.error_pct.toFixed(1)) + '%<br>p95 ' + esc(fmtMs(e.p95_ms));
        }
        var n = p.data.raw;
        return '<b>' + esc(n.name) + '</b> (' + esc(n.type) + ')<br>' + esc(n.count) + ' requests' +
          (n.p95_ms !== null && n.p95_ms !== undefined ? '<br>p95 ' + esc(fmtMs(n.p95_ms)) : '');
      }},
      series: [{
        type: 'graph', layout: 'force', roam: true, draggable: true,
        force: {repulsion: 700, edgeLength: [140, 260], gravity: 0.08},
        label: {show: true, position: 'bottom', fontSize: 13},
        edgeSymbol: ['none', 'arrow'], edgeSymbolSize: 9,
        edgeLabel: {show: true, fontSize: 11, color: '#333', formatter: function (p) {
          var e = p.data.raw;
          return e.rate.toFixed(2) + '/s · ' + e.error_pct.toFixed(1) + '% err · p95 ' + fmtMs(e.p95_ms);
        }},
        lineStyle: {width: 1.6, curveness: 0.12, opacity: 0.8},
        data: data.nodes.map(function (n) {
          return {name: n.name, raw: n, symbol: symbols[n.type] || 'circle',
                  symbolSize: 26 + 30 * Math.sqrt((n.count || 0) / max),
                  itemStyle: {color: n.type === 'service' ? color(n.name) : (n.type === 'db' ? '#868e96' : '#adb5bd')}};
        }),
        links: data.edges.map(function (e) {
          return {source: e.src, target: e.dst, raw: e,
                  lineStyle: {color: e.error_pct > 5 ? '#d62728' : '#888', width: 1 + Math.min(5, Math.log10(1 + e.count))}};
        })
      }]
    });
    chart.on('click', function (p) {
      if (p.dataType === 'node' && p.data.raw.type === 'service') {
        window.location.href = base + '/service?service=' + encodeURIComponent(p.data.raw.name);
      }
    });
  }

  // ------------------------------------------------------------------------------------ start

  function colourSwatches() {
    document.querySelectorAll('.swatch[data-service]').forEach(function (node) {
      node.style.background = color(node.dataset.service);
    });
  }

  function start() {
    colourSwatches();
    var block = document.getElementById('page-data');
    var data = block ? JSON.parse(block.textContent || '{}') : {};
    var page = document.body.dataset.page;
    if (typeof echarts === 'undefined') { return; }
    if (page === 'services' && data.series) { servicesPage(data); }
    if (page === 'service') { rateAndLatency(data); }
    if (page === 'endpoint') { endpointPage(data); }
    if (page === 'trace') { tracePage(data); }
    if (page === 'map' && data.nodes) { mapPage(data); }
    window.addEventListener('resize', function () { charts.forEach(function (c) { c.resize(); }); });
    document.body.dataset.ready = '1';
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
