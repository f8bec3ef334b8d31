"""SQL normalization and obfuscation: no literal ever leaks, placeholders stay, operation and table found."""

from __future__ import annotations

import threading
from typing import List, NamedTuple, Optional

import pytest
import sqlparse
import sqlparse.lexer
from hypothesis import given
from hypothesis import strategies as st
from sqlparse import tokens as T

from autoinstr import sql
from autoinstr.sql import CACHE_SIZE, MAX_STATEMENT_LENGTH, Summary, clear_cache, span_name, summarize

DIALECTS = ("generic", "sqlite", "postgresql", "mysql")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def assert_hidden(text: str, secrets: List[str]) -> None:
    """Neither a planted literal nor any 4+ character piece of one shows in `text` (case-insensitive)."""
    low = text.lower()
    for secret in secrets:
        s = secret.lower()
        assert s not in low, (secret, text)
        for size in range(4, len(s)):
            for i in range(len(s) - size + 1):
                assert s[i:i + size] not in low, (secret, s[i:i + size], text)


# ---------------------------------------------------------------------------------------------- corpus


class Case(NamedTuple):
    dialect: str
    statement: str
    secrets: List[str]
    expected: Optional[str] = None


_IDS = list(range(90001, 90061))
_EMAILS = ["user%02d@zqbulk.example" % i for i in range(20)]

CORPUS: List[Case] = [
    # ---- generic: ORMs, hand-written SQL, DB-API drivers nobody told us about
    Case("generic", "SELECT id, name FROM users WHERE email = 'kq.zed@jvxqbox.example' AND active = TRUE",
         ["kq.zed@jvxqbox.example"], "SELECT id, name FROM users WHERE email = ? AND active = ?"),
    Case("generic", "SELECT id FROM payments WHERE card = '4111 1111 1111 1111'",
         ["4111 1111 1111 1111"], "SELECT id FROM payments WHERE card = ?"),
    Case("generic", "SELECT id FROM payments WHERE pan = 4111111111111111 AND cvv = 737",
         ["4111111111111111", "737"], "SELECT id FROM payments WHERE pan = ? AND cvv = ?"),
    Case("generic", "SELECT * FROM authors WHERE last_name = 'O''Reilly'",
         ["O''Reilly", "O'Reilly", "Reilly"], "SELECT * FROM authors WHERE last_name = ?"),
    Case("generic", "SELECT /* password='hunter2' */ id FROM users WHERE id = 42",
         ["password='hunter2'", "hunter2"], "SELECT id FROM users WHERE id = ?"),
    Case("generic", "SELECT id FROM users -- token=tk_9f8e7d6c\nWHERE id = 7",
         ["tk_9f8e7d6c"], "SELECT id FROM users WHERE id = ?"),
    Case("generic", "SELECT balance FROM accounts WHERE owner = 'zqmallory'; "
         "DELETE FROM sessions WHERE token = 'tok_77aa88bb'",
         ["zqmallory", "tok_77aa88bb"],
         "SELECT balance FROM accounts WHERE owner = ?; DELETE FROM sessions WHERE token = ?"),
    Case("generic", "SELECT * FROM readings WHERE temp > -273.15 AND mass < 6.02e23 AND eps = 1.5E-10 AND n <> -42",
         ["273.15", "6.02e23", "1.5E-10", "-42"],
         "SELECT * FROM readings WHERE temp > ? AND mass < ? AND eps = ? AND n <> ?"),
    Case("generic", "SELECT * FROM orders WHERE id IN (%s)" % ", ".join(map(str, _IDS)),
         [str(i) for i in _IDS], "SELECT * FROM orders WHERE id IN (?)"),
    Case("generic", "SELECT * FROM customers WHERE name LIKE '%zqsmith%' OR handle ILIKE 'jq%@corp.example'",
         ["zqsmith", "jq%@corp.example"], "SELECT * FROM customers WHERE name LIKE ? OR handle ILIKE ?"),
    Case("generic", "WITH big AS (SELECT * FROM orders WHERE total > 5000) "
         "SELECT customer_id FROM big WHERE region = 'zqnorth'",
         ["5000", "zqnorth"],
         "WITH big AS (SELECT * FROM orders WHERE total > ?) SELECT customer_id FROM big WHERE region = ?"),
    Case("generic", "SELECT u.id, o.total FROM users u JOIN orders o ON o.user_id = u.id "
         "LEFT JOIN refunds r ON r.order_id = o.id WHERE u.ssn = '078-05-1120'",
         ["078-05-1120"],
         "SELECT u.id, o.total FROM users u JOIN orders o ON o.user_id = u.id "
         "LEFT JOIN refunds r ON r.order_id = o.id WHERE u.ssn = ?"),
    Case("generic", "SELECT * FROM users WHERE id IN (SELECT user_id FROM logins WHERE ip = '203.0.113.77')",
         ["203.0.113.77"], "SELECT * FROM users WHERE id IN (SELECT user_id FROM logins WHERE ip = ?)"),
    Case("generic", "SELECT CASE WHEN salary > 120000 THEN 'zqexec' WHEN salary < 0 THEN 'zqneg' "
         "ELSE 'zqstaff' END AS band FROM employees",
         ["120000", "zqexec", "zqneg", "zqstaff"],
         "SELECT CASE WHEN salary > ? THEN ? WHEN salary < ? THEN ? ELSE ? END AS band FROM employees"),
    Case("generic", "SELECT id, ROW_NUMBER() OVER (PARTITION BY dept ORDER BY salary DESC) AS rn "
         "FROM employees WHERE hired > '2019-03-14'",
         ["2019-03-14"],
         "SELECT id, ROW_NUMBER() OVER (PARTITION BY dept ORDER BY salary DESC) AS rn FROM employees WHERE hired > ?"),
    Case("generic", "CREATE TABLE accounts (id INTEGER PRIMARY KEY, api_key TEXT DEFAULT 'zq-dk-4417', "
         "limit_cents INTEGER DEFAULT 50000)",
         ["zq-dk-4417", "50000"],
         "CREATE TABLE accounts (id INTEGER PRIMARY KEY, api_key TEXT DEFAULT ?, limit_cents INTEGER DEFAULT ?)"),
    Case("generic", "INSERT INTO events (kind, payload) VALUES ('zqsignup', "
         "'{\"email\": \"kx@vaultbox.example\", \"tags\": [\"a\", \"b\"], \"note\": \"say ''hi'' zqjson\"}')",
         ["zqsignup", "kx@vaultbox.example", "say ''hi'' zqjson", '"tags"'],
         "INSERT INTO events (kind, payload) VALUES (?)"),
    Case("generic", "UPDATE users SET password_hash = '$2b$12$zqHvXbQwJkLm', "
         "updated_at = '2024-05-01 12:00:00' WHERE id = 1001",
         ["$2b$12$zqHvXbQwJkLm", "2024-05-01 12:00:00", "1001"],
         "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?"),
    Case("generic", 'SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" '
         "WHERE \"auth_user\".\"username\" = 'zqadmin' LIMIT 21",
         ["zqadmin"],
         'SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."username" = ? LIMIT ?'),
    Case("generic", "INSERT INTO user_account (name, fullname) VALUES ('zqspongebob', 'Spongebob Squarepants') "
         "RETURNING id",
         ["zqspongebob", "Spongebob Squarepants"],
         "INSERT INTO user_account (name, fullname) VALUES (?) RETURNING id"),
    Case("generic", "INSERT INTO subscribers (email, n) VALUES %s"
         % ", ".join("('%s', %d)" % (e, 1000 + i) for i, e in enumerate(_EMAILS)),
         _EMAILS + ["1000", "1019"], "INSERT INTO subscribers (email, n) VALUES (?)"),
    Case("generic", "SELECT * FROM invoices WHERE created BETWEEN '2023-01-01' AND '2023-12-31'",
         ["2023-01-01", "2023-12-31"], "SELECT * FROM invoices WHERE created BETWEEN ? AND ?"),
    Case("generic", "SELECT count(*) FROM events WHERE ts > NOW() - INTERVAL '7 days' AND user_id = 5551234",
         ["7 days", "5551234"], "SELECT count(*) FROM events WHERE ts > NOW() - INTERVAL ? AND user_id = ?"),
    Case("generic", "SELECT dept, avg(salary) FROM emp GROUP BY dept HAVING avg(salary) > 98765.5",
         ["98765.5"], "SELECT dept, avg(salary) FROM emp GROUP BY dept HAVING avg(salary) > ?"),
    Case("generic", "SELECT name FROM a WHERE k = 'zqalpha' UNION ALL SELECT name FROM b WHERE k = 'zqbravo'",
         ["zqalpha", "zqbravo"], "SELECT name FROM a WHERE k = ? UNION ALL SELECT name FROM b WHERE k = ?"),
    Case("generic", "SELECT 1 FROM dual WHERE EXISTS (SELECT 1 FROM blocklist WHERE phone = '+1-202-555-0173')",
         ["+1-202-555-0173", "555-0173"], "SELECT ? FROM dual WHERE EXISTS (SELECT ? FROM blocklist WHERE phone = ?)"),
    Case("generic", "SELECT a FROM t -- WHERE secret = 'zqlinecomment'",
         ["zqlinecomment", "secret"], "SELECT a FROM t"),
    Case("generic", "SELECT a\n/* debug:\n   user='zqdebuguser'\n*/\nFROM t",
         ["zqdebuguser", "debug"], "SELECT a FROM t"),
    Case("generic", "SELECT * FROM t WHERE a = 'zqtab\tzq  and  zqspaces'",
         ["zqspaces", "zqtab\tzq"], "SELECT * FROM t WHERE a = ?"),
    Case("generic", "DELETE FROM sessions WHERE expires < 1700000000 AND agent LIKE '%Mozilla/5.0 (zqKhtml)%'",
         ["1700000000", "Mozilla/5.0 (zqKhtml)"], "DELETE FROM sessions WHERE expires < ? AND agent LIKE ?"),
    Case("generic", "SELECT * FROM people WHERE (first, last) IN (('Zqanna', 'Zqsmith'), ('Zqbob', 'Zqjones'))",
         ["Zqanna", "Zqsmith", "Zqbob", "Zqjones"], "SELECT * FROM people WHERE (first, last) IN (?)"),
    Case("generic", "SELECT * FROM t WHERE a IN ('zqone', 'zqtwo') AND b NOT IN (10001, 10002)",
         ["zqone", "zqtwo", "10001", "10002"], "SELECT * FROM t WHERE a IN (?) AND b NOT IN (?)"),
    Case("generic", "SELECT COALESCE(nickname, 'zqanonymous') FROM profiles",
         ["zqanonymous"], "SELECT COALESCE(nickname, ?) FROM profiles"),
    Case("generic", "SELECT * FROM t WHERE token = N'zqnational'", ["zqnational"], "SELECT * FROM t WHERE token = ?"),
    Case("generic", "SELECT * FROM t WHERE h = X'DEADBEEF01' OR b = B'1011001110'",
         ["DEADBEEF01", "1011001110"], "SELECT * FROM t WHERE h = ? OR b = ?"),
    Case("generic", "SELECT * FROM t WHERE h = 0xCAFEBABE42", ["CAFEBABE42"], "SELECT * FROM t WHERE h = ?"),
    Case("generic", "SELECT {fn UCASE('zqodbc')}, {d '2024-02-29'}",
         ["zqodbc", "2024-02-29"], "SELECT {fn UCASE(?)}, {d ?}"),
    Case("generic", "MERGE INTO target t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET note = 'zqfused' "
         "WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, 'zqadded')",
         ["zqfused", "zqadded"],
         "MERGE INTO target t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET note = ? "
         "WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, ?)"),
    Case("generic", "CALL sp_update_customer(12345678, 'zqviaproc')",
         ["12345678", "zqviaproc"], "CALL sp_update_customer(?, ?)"),
    Case("generic", "EXEC sp_executesql N'SELECT * FROM t WHERE a = @a', N'@a int', @a = 99887766",
         ["99887766", "@a int", "= @a'"], "EXEC sp_executesql ?, ?, @a = ?"),
    Case("generic", "SELECT * FROM t WHERE a = 'multi\nline\nzqsecret'", ["zqsecret", "multi\nline"],
         "SELECT * FROM t WHERE a = ?"),
    Case("generic", 'SELECT * FROM "Order Details" WHERE "Unit Price" > 1234.56',
         ["1234.56"], 'SELECT * FROM "Order Details" WHERE "Unit Price" > ?'),
    # generic does not know whether a backslash escapes: it takes the reading that lexes cleanly...
    Case("generic", r"INSERT INTO notes (body) VALUES ('it\'s zqescaped')",
         ["zqescaped"], "INSERT INTO notes (body) VALUES (?)"),
    Case("generic", r"SELECT * FROM files WHERE path = 'C:\temp\' AND owner = 'zqlandlord'",
         ["zqlandlord", "temp"], "SELECT * FROM files WHERE path = ? AND owner = ?"),
    # ...and hides everything when both readings lex cleanly but disagree
    Case("generic", r"SELECT 'a\' -- ' AS zqalias", ["zqalias"], "?"),
    Case("generic", "SELECT * FROM users WHERE name = 'zqunterminated", ["zqunterminated"], "?"),
    Case("generic", "SELECT * FROM t WHERE a = 1 /* never closed: password='zqhunter'", ["zqhunter", "never"],
         "SELECT * FROM t WHERE a = ?"),
    Case("generic", "UPDATE ONLY users SET verified = FALSE, note = NULL WHERE code = 'zqkx77'",
         ["zqkx77"], "UPDATE ONLY users SET verified = ?, note = NULL WHERE code = ?"),
    Case("generic", "SELECT * FROM t WHERE a = 'x' /* 'zqcommented' */ AND b = 'y'--'zqtail'",
         ["zqcommented", "zqtail"], "SELECT * FROM t WHERE a = ? AND b = ?"),
    # ---- SQLite
    Case("sqlite", "INSERT INTO users (email, pw) VALUES ('kv@zqfast.example', 'zqpassw0rd')",
         ["kv@zqfast.example", "zqpassw0rd"], "INSERT INTO users (email, pw) VALUES (?)"),
    Case("sqlite", "SELECT * FROM [order items] WHERE [sku] = 'ZQ-SKU-99812'",
         ["ZQ-SKU-99812"], "SELECT * FROM [order items] WHERE [sku] = ?"),
    Case("sqlite", "INSERT OR REPLACE INTO kv (k, v) VALUES ('zqk1', x'0A0B0C0D0E')",
         ["zqk1", "0A0B0C0D0E"], "INSERT OR REPLACE INTO kv (k, v) VALUES (?)"),
    Case("sqlite", "SELECT * FROM t WHERE a = ?1 AND b = 'zqsqlitelit'",
         ["zqsqlitelit"], "SELECT * FROM t WHERE a = ?1 AND b = ?"),
    Case("sqlite", "UPDATE settings SET value = 'it''s zqquoted' WHERE key = 'zqtheme'",
         ["it''s zqquoted", "zqtheme"], "UPDATE settings SET value = ? WHERE key = ?"),
    Case("sqlite", "CREATE TABLE IF NOT EXISTS prefs (k TEXT PRIMARY KEY, v TEXT DEFAULT 'zqdflt9', "
         "n INTEGER DEFAULT -1)",
         ["zqdflt9"], "CREATE TABLE IF NOT EXISTS prefs (k TEXT PRIMARY KEY, v TEXT DEFAULT ?, n INTEGER DEFAULT ?)"),
    Case("sqlite", r"SELECT * FROM t WHERE note = 'a backslash \ stays zqsqlite'",
         ["zqsqlite", "backslash"], "SELECT * FROM t WHERE note = ?"),
    Case("sqlite", r"SELECT * FROM t WHERE note = 'C:\dir\' AND b = 'zqafter'",
         ["zqafter", "C:\\dir"], "SELECT * FROM t WHERE note = ? AND b = ?"),
    Case("sqlite", "PRAGMA key = 'zqsqlcipherkey'", ["zqsqlcipherkey"], "PRAGMA key = ?"),
    Case("sqlite", "ATTACH DATABASE '/var/db/zqshard.db' AS tenant", ["/var/db/zqshard.db"],
         "ATTACH DATABASE ? AS tenant"),
    Case("sqlite", "SELECT json_extract(data, '$.user.zqfield') FROM docs WHERE id = 31337",
         ["$.user.zqfield", "31337"], "SELECT json_extract(data, ?) FROM docs WHERE id = ?"),
    Case("sqlite", "INSERT INTO t VALUES (1, 'zqa1'), (2, 'zqb2'), (3, NULL)", ["zqa1", "zqb2"],
         "INSERT INTO t VALUES (?)"),
    Case("sqlite", "UPDATE OR IGNORE users SET name = 'zqskipme' WHERE id = 77889900",
         ["zqskipme", "77889900"], "UPDATE OR IGNORE users SET name = ? WHERE id = ?"),
    Case("sqlite", "SELECT * FROM t LIMIT 50 OFFSET 12345", ["12345"], "SELECT * FROM t LIMIT ? OFFSET ?"),
    Case("sqlite", "SELECT * FROM t WHERE a = :pval AND b = @p AND c = $v AND d = 'zqnamed'", ["zqnamed"],
         "SELECT * FROM t WHERE a = :pval AND b = @p AND c = $v AND d = ?"),
    Case("sqlite", "SELECT 'it\\'s zqsqliteleak' FROM t", ["zqsqliteleak"], "?"),
    Case("sqlite", "BEGIN; INSERT INTO log VALUES ('zqfirst'); INSERT INTO log VALUES ('zqsecond'); COMMIT",
         ["zqfirst", "zqsecond"], "BEGIN; INSERT INTO log VALUES (?); INSERT INTO log VALUES (?); COMMIT"),
    # ---- PostgreSQL
    Case("postgresql", "SELECT * FROM users WHERE id = $1 AND email = 'zq@pgbox.example'",
         ["zq@pgbox.example"], "SELECT * FROM users WHERE id = $1 AND email = ?"),
    Case("postgresql", "SELECT '31337'::int, '2024-01-02'::date, ARRAY['zqa1', 'zqb2']::text[]",
         ["31337", "2024-01-02", "zqa1", "zqb2"], "SELECT ?::int, ?::date, ARRAY[?, ?]::text[]"),
    Case("postgresql", r"SELECT E'zq\'escaped\\ and \n zqnewline'", ["zq\\'escaped", "zqnewline"], "SELECT ?"),
    Case("postgresql", r"SELECT U&'d\0061t\+000061zqunicode'", ["zqunicode", "0061"], "SELECT ?"),
    Case("postgresql", "CREATE FUNCTION f() RETURNS text AS $$ SELECT 'zqbodysecret' $$ LANGUAGE sql",
         ["zqbodysecret"], "CREATE FUNCTION f() RETURNS text AS ? LANGUAGE sql"),
    Case("postgresql", "DO $body$ BEGIN RAISE NOTICE 'zqnotice %', 'zqarg'; END $body$",
         ["zqnotice", "zqarg", "RAISE"], "DO ?"),
    Case("postgresql", "SELECT $tag$it's a 'quoted' zqdollar$tag$", ["zqdollar", "quoted"], "SELECT ?"),
    Case("postgresql", "INSERT INTO kv (k, v) VALUES ('zqkey', 'zqvv1') ON CONFLICT (k) "
         "DO UPDATE SET v = 'zqvv2', n = kv.n + 1",
         ["zqkey", "zqvv1", "zqvv2"],
         "INSERT INTO kv (k, v) VALUES (?) ON CONFLICT (k) DO UPDATE SET v = ?, n = kv.n + ?"),
    Case("postgresql", "SELECT data->>'zqjsonkey', data #>> '{a,zqpath}' FROM docs "
         "WHERE data @> '{\"zqcontains\": 1}'",
         ["zqjsonkey", "zqpath", "zqcontains"], "SELECT data->>?, data #>> ? FROM docs WHERE data @> ?"),
    Case("postgresql", "SELECT * FROM t WHERE bits = B'0101010111' AND h = X'1F2E3D4C'",
         ["0101010111", "1F2E3D4C"], "SELECT * FROM t WHERE bits = ? AND h = ?"),
    Case("postgresql", "SELECT 1 /* outer /* inner */ zqnested */", ["zqnested"], "?"),
    Case("postgresql", "WITH RECURSIVE tree(id, parent) AS (SELECT id, parent FROM nodes WHERE id = 424242 "
         "UNION ALL SELECT n.id, n.parent FROM nodes n JOIN tree t ON n.parent = t.id) SELECT * FROM tree",
         ["424242"],
         "WITH RECURSIVE tree(id, parent) AS (SELECT id, parent FROM nodes WHERE id = ? UNION ALL "
         "SELECT n.id, n.parent FROM nodes n JOIN tree t ON n.parent = t.id) SELECT * FROM tree"),
    Case("postgresql", "WITH moved AS (DELETE FROM queue WHERE locked_by = 'zqworker' RETURNING *) "
         "INSERT INTO archive SELECT * FROM moved",
         ["zqworker"],
         "WITH moved AS (DELETE FROM queue WHERE locked_by = ? RETURNING *) INSERT INTO archive SELECT * FROM moved"),
    Case("postgresql", "SELECT id, rank() OVER (PARTITION BY dept ORDER BY salary DESC) FROM emp "
         "WHERE hired > DATE '2020-02-02'",
         ["2020-02-02"],
         "SELECT id, rank() OVER (PARTITION BY dept ORDER BY salary DESC) FROM emp WHERE hired > DATE ?"),
    Case("postgresql", "COPY users (email, name) FROM STDIN WITH (FORMAT csv, NULL 'zqnilmark')",
         ["zqnilmark"], "COPY users (email, name) FROM STDIN WITH (FORMAT csv, NULL ?)"),
    Case("postgresql", "SELECT * FROM events WHERE ts AT TIME ZONE 'America/Zqcity' > '2024-01-01'",
         ["America/Zqcity", "2024-01-01"], "SELECT * FROM events WHERE ts AT TIME ZONE ? > ?"),
    Case("postgresql", "SELECT * FROM t WHERE a = ANY($1) AND b = 'zqany'", ["zqany"],
         "SELECT * FROM t WHERE a = ANY($1) AND b = ?"),
    Case("postgresql", r"SELECT 'it\'s zqpgleak' FROM t", ["zqpgleak"], "?"),
    Case("postgresql", "SELECT * FROM ONLY measurements WHERE v = -0.000123", ["0.000123"],
         "SELECT * FROM ONLY measurements WHERE v = ?"),
    Case("postgresql", "ALTER TABLE users ADD COLUMN tier text DEFAULT 'zqbronze' NOT NULL", ["zqbronze"],
         "ALTER TABLE users ADD COLUMN tier text DEFAULT ? NOT NULL"),
    Case("postgresql", "SELECT set_config('app.zqtenant', 'zqtenantvalue', false)",
         ["app.zqtenant", "zqtenantvalue"], "SELECT set_config(?, ?, ?)"),
    Case("postgresql", "SELECT * FROM t WHERE tsv @@ to_tsquery('english', 'zqsearch & terms')",
         ["zqsearch & terms", "english"], "SELECT * FROM t WHERE tsv @@ to_tsquery(?, ?)"),
    Case("postgresql", "INSERT INTO t (a) SELECT x FROM generate_series(1, 1000000) x", ["1000000"],
         "INSERT INTO t (a) SELECT x FROM generate_series(?, ?) x"),
    Case("postgresql", "SELECT pg_advisory_lock(987654321)", ["987654321"], "SELECT pg_advisory_lock(?)"),
    Case("postgresql", "SELECT * FROM t WHERE name ~* '^zqregex[0-9]+$'", ["zqregex"],
         "SELECT * FROM t WHERE name ~* ?"),
    Case("postgresql", "NOTIFY jobs, 'zqpayload'", ["zqpayload"], "NOTIFY jobs, ?"),
    Case("postgresql", "SET search_path TO 'zqschema', public", ["zqschema"], "SET search_path TO ?, public"),
    Case("postgresql", "SELECT * FROM t WHERE a = $2 AND b = E'zq\\x41\\'s'", ["zq\\x41"],
         "SELECT * FROM t WHERE a = $2 AND b = ?"),
    Case("postgresql", "SELECT '5'::int + 10 * -2, x - 7 FROM t", ["10"], "SELECT ?::int + ? * ?, x - ? FROM t"),
    Case("postgresql", "SELECT $a$ zqtagA $A$ still inside $a$", ["zqtagA", "still inside"], "SELECT ?"),
    # ---- MySQL / MariaDB
    Case("mysql", "SELECT * FROM users WHERE name = \"zqdouble\" AND nick = 'zqsingle'", ["zqdouble", "zqsingle"],
         "SELECT * FROM users WHERE name = ? AND nick = ?"),
    Case("mysql", r"SELECT * FROM authors WHERE name = 'it\'s zqescaped'", ["zqescaped"],
         "SELECT * FROM authors WHERE name = ?"),
    Case("mysql", r"INSERT INTO notes (a, b) VALUES ('path C:\\zqdir\\', "
         + '"say \\"zqhello\\"")',
         ["zqdir", "zqhello"], "INSERT INTO notes (a, b) VALUES (?)"),
    Case("mysql", r"SELECT * FROM t WHERE a = 'abc\\' AND b = 'zqafterbackslash'", ["zqafterbackslash"],
         "SELECT * FROM t WHERE a = ? AND b = ?"),
    Case("mysql", "SELECT * FROM `db`.`users` WHERE `email` = 'zq@mybox.example'", ["zq@mybox.example"],
         "SELECT * FROM `db`.`users` WHERE `email` = ?"),
    Case("mysql", "INSERT INTO kv (k, v) VALUES ('zqkey', 'zqval') ON DUPLICATE KEY UPDATE v = VALUES(v), "
         "hits = hits + 1",
         ["zqkey", "zqval"],
         "INSERT INTO kv (k, v) VALUES (?) ON DUPLICATE KEY UPDATE v = VALUES(v), hits = hits + ?"),
    Case("mysql", "SELECT id FROM users # api_key=zqhashcomment\nWHERE id = 7", ["zqhashcomment"],
         "SELECT id FROM users WHERE id = ?"),
    Case("mysql", "SELECT id FROM users #zqnospace 'x\nWHERE id = 7", ["zqnospace"],
         "SELECT id FROM users WHERE id = ?"),
    Case("mysql", "SELECT /*!40001 SQL_NO_CACHE */ * FROM t WHERE k = 'zqk9'", ["zqk9"],
         "SELECT * FROM t WHERE k = ?"),
    Case("mysql", "SELECT _utf8mb4'zqintroducer' COLLATE utf8mb4_bin", ["zqintroducer"],
         "SELECT ? COLLATE utf8mb4_bin"),
    Case("mysql", "SELECT * FROM blobs WHERE h = 0xDEADBEEF99 OR h = x'CAFEF00D' OR b = b'101101'",
         ["DEADBEEF99", "CAFEF00D", "101101"], "SELECT * FROM blobs WHERE h = ? OR h = ? OR b = ?"),
    Case("mysql", "REPLACE INTO cache (k, v) VALUES ('zqck1x', 'zqcv1x')", ["zqck1x", "zqcv1x"],
         "REPLACE INTO cache (k, v) VALUES (?)"),
    Case("mysql", "UPDATE LOW_PRIORITY accounts SET balance = balance - 99.95 WHERE id = 5550001",
         ["99.95", "5550001"], "UPDATE LOW_PRIORITY accounts SET balance = balance - ? WHERE id = ?"),
    Case("mysql", "DELETE u FROM users u JOIN bans b ON b.user_id = u.id WHERE b.reason = 'zqbanned'",
         ["zqbanned"], "DELETE u FROM users u JOIN bans b ON b.user_id = u.id WHERE b.reason = ?"),
    Case("mysql", "SET @zqvar := 'zqsetvalue'", ["zqsetvalue"], "SET @zqvar := ?"),
    Case("mysql", 'SELECT * FROM t WHERE a = "it""s zqdoubled"', ["zqdoubled"], "SELECT * FROM t WHERE a = ?"),
    Case("mysql", r"SELECT * FROM t WHERE a LIKE 'zq\_under\%score'", ["zq\\_under", "score"],
         "SELECT * FROM t WHERE a LIKE ?"),
    Case("mysql", "CREATE TABLE `sessions` (`id` VARCHAR(64) NOT NULL DEFAULT 'zqdflt9', "
         "`ttl` INT DEFAULT 3600) ENGINE=InnoDB",
         ["zqdflt9", "3600"],
         "CREATE TABLE `sessions` (`id` VARCHAR(?) NOT NULL DEFAULT ?, `ttl` INT DEFAULT ?) ENGINE=InnoDB"),
    Case("mysql", "SELECT * FROM t WHERE id = -9988776655", ["9988776655"], "SELECT * FROM t WHERE id = ?"),
    Case("mysql", "INSERT INTO t (a,b) VALUES (1,'zq1a'),(2,'zq2b'),(3,'zq3c')", ["zq1a", "zq2b", "zq3c"],
         "INSERT INTO t (a,b) VALUES (?)"),
    Case("mariadb", 'SELECT * FROM t WHERE a = "zqmaria"', ["zqmaria"], "SELECT * FROM t WHERE a = ?"),
    Case("mysql", "SELECT * FROM t WHERE a = 'unterminated \\' zqmysqlopen", ["zqmysqlopen"], "?"),
    Case("mysql", "LOAD DATA INFILE '/tmp/zqexport.csv' INTO TABLE t", ["/tmp/zqexport.csv"],
         "LOAD DATA INFILE ? INTO TABLE t"),
    Case("mysql", "SELECT CONCAT('zqhello', ' ', \"zqworld\"), 4111111111111111 FROM dual",
         ["zqhello", "zqworld", "4111111111111111"], "SELECT CONCAT(?, ?, ?), ? FROM dual"),
]


def test_corpus_is_big_and_mostly_exact():
    assert len(CORPUS) >= 100
    assert sum(case.expected is not None for case in CORPUS) >= 40


@pytest.mark.parametrize("case", CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_corpus_hides_every_literal(case: Case):
    result = summarize(case.statement, case.dialect)
    assert_hidden(result.text, case.secrets)
    if case.expected is not None:
        assert result.text == case.expected


# ------------------------------------------------------------------------------------------ placeholders


@pytest.mark.parametrize("dialect, where", [
    ("generic", "a = ? AND b = ?"),  # qmark
    ("sqlite", "a = ?1 AND b = ?2"),
    ("generic", "a = :1 AND b = :2"),  # numeric
    ("generic", "a = :name AND b = :other_name"),  # named
    ("generic", "a = %s AND b = %s"),  # format
    ("generic", "a = %(name)s AND b = %(other)s"),  # pyformat
    ("postgresql", "a = $1 AND b = $2::int"),
    ("sqlite", "a = @name AND b = $name"),
    ("mysql", "a = @user_var AND b = @@session.sql_mode"),
    ("generic", "a = @p0 AND b = -%s"),
])
def test_placeholders_are_kept_as_written(dialect: str, where: str):
    statement = "SELECT * FROM t WHERE " + where
    assert summarize(statement, dialect).text == statement


def test_placeholders_and_literals_side_by_side():
    assert summarize("UPDATE t SET a = %s, b = 'zq' WHERE c = %(c)s AND d = 5").text == \
        "UPDATE t SET a = %s, b = ? WHERE c = %(c)s AND d = ?"


# ------------------------------------------------------------------------------------ IN and VALUES lists


@pytest.mark.parametrize("statement, expected", [
    ("SELECT * FROM t WHERE a IN (1, 2, 3)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN (?, ?, ?)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN (%s, %s)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN (:a, :b)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN ($1, $2)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN ('x', -1, NULL)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN (?)", "SELECT * FROM t WHERE a IN (?)"),
    ("SELECT * FROM t WHERE a IN(1,2)", "SELECT * FROM t WHERE a IN(?)"),
    ("select * from t where a not in ( 1 , 2 )", "select * from t where a not in (?)"),
    ("SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))", "SELECT * FROM t WHERE (a, b) IN (?)"),
    ("SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE c = 1)",
     "SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE c = ?)"),
    ("SELECT * FROM t WHERE a IN (b, c)", "SELECT * FROM t WHERE a IN (b, c)"),
    ("SELECT * FROM t WHERE a IN (lower('X'), ?)", "SELECT * FROM t WHERE a IN (lower(?), ?)"),
    ("SELECT * FROM t WHERE a IN ()", "SELECT * FROM t WHERE a IN ()"),
])
def test_in_lists_collapse(statement: str, expected: str):
    assert summarize(statement).text == expected


@pytest.mark.parametrize("statement, expected", [
    ("INSERT INTO t VALUES (1, 'a'), (2, 'b')", "INSERT INTO t VALUES (?)"),
    ("INSERT INTO t VALUES (%s, %s), (%s, %s)", "INSERT INTO t VALUES (?)"),
    ("INSERT INTO t VALUES (%s, %s)", "INSERT INTO t VALUES (?)"),
    ("INSERT INTO t (a, b) VALUES (?, ?) RETURNING id", "INSERT INTO t (a, b) VALUES (?) RETURNING id"),
    ("INSERT INTO t VALUES (1, DEFAULT), (NULL, -2)", "INSERT INTO t VALUES (?)"),
    ("INSERT INTO t VALUES (?, now()), (?, now()), (?, now())", "INSERT INTO t VALUES (?, now())"),
    ("INSERT INTO t VALUES (1, now()), (2, lower('x'))", "INSERT INTO t VALUES (?, now()), (?, lower(?))"),
    ("INSERT INTO t VALUE (1, 2)", "INSERT INTO t VALUE (?)"),
    ("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v (n, s)", "SELECT * FROM (VALUES (?)) AS v (n, s)"),
])
def test_values_lists_collapse(statement: str, expected: str):
    assert summarize(statement).text == expected


def test_bulk_inserts_of_any_size_normalize_alike():
    texts = {summarize("INSERT INTO t (a, b) VALUES " + ", ".join(["(%s, %s)"] * n)).text for n in (1, 2, 7, 500)}
    assert texts == {"INSERT INTO t (a, b) VALUES (?)"}


# ---------------------------------------------------------------------------------- comments, whitespace


@pytest.mark.parametrize("dialect, statement, expected", [
    ("generic", "SELECT a /* c1 */ FROM /* c2 */ t -- c3", "SELECT a FROM t"),
    ("generic", "SELECT/**/1", "SELECT ?"),
    ("generic", "/* leading */ SELECT 1", "SELECT ?"),
    ("generic", "SELECT /*+ INDEX(t idx) */ a FROM t", "SELECT a FROM t"),
    ("generic", "SELECT 1 -- trailing 'zq'", "SELECT ?"),
    ("generic", "SELECT 1 # comment", "SELECT ?"),
    ("generic", "SELECT * FROM #temp", "SELECT * FROM #temp"),
    ("mysql", "SELECT 1 #comment\nFROM t", "SELECT ? FROM t"),
    ("postgresql", "SELECT data #> '{a}' FROM t", "SELECT data #> ? FROM t"),
    ("generic", "SELECT a FROM t /* unterminated zq", "SELECT a FROM t"),
    ("generic", "SELECT '/* not a comment */', '-- nor this'", "SELECT ?, ?"),
    ("generic", "SELECT 1 /* a */ /* b */ + 2", "SELECT ? + ?"),
    ("generic", "-- only a comment", ""),
])
def test_comments_are_removed(dialect: str, statement: str, expected: str):
    assert summarize(statement, dialect).text == expected


@pytest.mark.parametrize("statement, expected", [
    ("\n\tSELECT  a,\n   b\r\nFROM t  ", "SELECT a, b FROM t"),
    ("SELECT\u00a0a\u2003FROM\x0bt", "SELECT a FROM t"),
    ("SELECT a\n-- c 'zq'\nFROM t", "SELECT a FROM t"),
    ("  ", ""),
    ("", ""),
])
def test_whitespace_is_folded(statement: str, expected: str):
    assert summarize(statement).text == expected


# ------------------------------------------------------------------------------------------- signs, misc


@pytest.mark.parametrize("statement, expected", [
    ("SELECT a - 5, a-5, -5, (-5), x * -2, y = +3 FROM t", "SELECT a - ?, a-?, ?, (?), x * ?, y = ? FROM t"),
    ("SELECT * FROM t WHERE z BETWEEN -1 AND -2 OR w = - 3", "SELECT * FROM t WHERE z BETWEEN ? AND ? OR w = ?"),
    ("SELECT CASE WHEN q THEN -1 ELSE +1 END, f(-1, -2), a.b - 1, \"c\" - 1, ? - 1 FROM t",
     "SELECT CASE WHEN q THEN ? ELSE ? END, f(?, ?), a.b - ?, \"c\" - ?, ? - ? FROM t"),
    ("SELECT NULL, null, TRUE, false, True", "SELECT NULL, null, ?, ?, ?"),
    ("SELECT 1;", "SELECT ?;"),
    ("SELECT 1.5e+3, .5, 5., 1_000, 0b1011, 0o17, 12abc", "SELECT ?, ?, ?, ?, ?, ?, ?"),
    ("SELECT t1.c2, c3_4 FROM t5", "SELECT t1.c2, c3_4 FROM t5"),
])
def test_numbers_signs_and_booleans(statement: str, expected: str):
    assert summarize(statement).text == expected


def test_keywords_and_identifiers_keep_their_case():
    assert summarize("select Name, \"MixedCase\" from Users where Id = 1").text == \
        "select Name, \"MixedCase\" from Users where Id = ?"


# ------------------------------------------------------------------------------------------- length cut


def test_long_statement_is_cut():
    statement = "SELECT " + ", ".join("column_%d" % i for i in range(2000)) + " FROM t"
    result = summarize(statement)
    assert len(statement) > MAX_STATEMENT_LENGTH
    assert result.text == statement[:MAX_STATEMENT_LENGTH]
    assert result.operation == "SELECT"
    raw = summarize(statement, obfuscate=False)
    assert raw.text == statement[:MAX_STATEMENT_LENGTH]


@pytest.mark.parametrize("dialect, head, secret, closer", [
    ("generic", "WHERE a = '", "zqcutsecretvalue", "' AND b = 1"),
    ("generic", "WHERE a = ? /* ", "zqcutsecretvalue", " */ AND b = 1"),
    ("postgresql", "WHERE a = $fn$ ", "zqcutsecretvalue", " $fn$"),
    ("postgresql", "WHERE a = E'x\\'", "zqcutsecretvalue", "'"),
    ("mysql", 'WHERE a = "x\\"', "zqcutsecretvalue", '"'),
    ("mysql", "WHERE a = 'it''", "zqcutsecretvalue", "'"),
    ("sqlite", "WHERE a = X'", "DEADBEEFDEADBEEF", "'"),
])
@pytest.mark.parametrize("inside", [1, 5, 10])
def test_cut_inside_a_literal_or_comment_hides_it(dialect: str, head: str, secret: str, closer: str, inside: int):
    """The cut falls `inside` characters into the secret: the unterminated rest is still hidden."""
    prefix = "SELECT * FROM t "
    pad = " " * (MAX_STATEMENT_LENGTH - len(prefix) - len(head) - inside)
    statement = prefix + pad + head + secret + closer
    assert len(statement) > MAX_STATEMENT_LENGTH
    result = summarize(statement, dialect)
    assert result.text == "SELECT * FROM t WHERE a = ?"
    assert result.collection == "t"
    assert_hidden(result.text, [secret[:inside]] if inside >= 4 else [])


def test_cut_statements_share_one_cache_entry():
    head = "SELECT " + "x, " * 1400 + "y FROM t WHERE a = "
    first, second = summarize(head + "'zq1'"), summarize(head + "'zq2'")
    assert len(head) > MAX_STATEMENT_LENGTH
    assert first is second


# ------------------------------------------------------------------------------------------ unsafe -> ?


@pytest.mark.parametrize("dialect, statement", [
    ("generic", "SELECT * FROM t WHERE a = 'zqopen"),
    ("postgresql", r"SELECT 'it\'s zqleak' FROM t"),
    ("sqlite", r"SELECT 'it\'s zqleak' FROM t"),
    ("generic", r"SELECT 'a\' -- ' AS zqalias"),
    ("postgresql", "SELECT 1 /* a /* b */ zqleak */ FROM t"),
    ("generic", r"SELECT \zqleak FROM t"),
    ("generic", 'SELECT "zqopen FROM t'),
    ("postgresql", "SELECT $x$ zqbody FROM t"),
    ("mysql", "SELECT `zqopen FROM t"),
    ("generic", "SELECT a \u20ac zqleak FROM t"),
    ("generic", "SELECT \x00 zqleak FROM t"),
])
def test_statements_that_cannot_be_lexed_safely_become_a_question_mark(dialect: str, statement: str):
    result = summarize(statement, dialect)
    assert result == Summary("?", "SELECT", "")


def test_an_internal_error_yields_the_failure_summary(monkeypatch):
    def boom(*_args):
        raise RuntimeError("zqsecret in the error")

    monkeypatch.setattr(sql, "_describe", boom)
    clear_cache()
    assert summarize("SELECT * FROM users WHERE a = 'zqsecret'") == Summary("?", "", "")
    assert summarize("SELECT 1", obfuscate=False) == Summary("?", "", "")


@pytest.mark.parametrize("junk", [None, 123, 4.5, object(), ["SELECT 1"], {"a": 1}])
def test_non_strings_never_raise(junk):
    assert summarize(junk) == Summary("?", "", "")


def test_bytes_are_decoded():
    assert summarize(b"SELECT * FROM t WHERE a = 'zq'") == Summary("SELECT * FROM t WHERE a = ?", "SELECT", "t")
    assert summarize(bytearray(b"SELECT '\xff\xfe'")).text == "SELECT ?"


def test_odd_strings_never_raise():
    for text in ("\ud800", "'\ud800'", "\x00" * 10, "'" * 101, "$$" * 50, "/*" * 50, "(" * 500, ")" * 500):
        for dialect in DIALECTS:
            for obfuscate in (True, False):
                result = summarize(text, dialect, obfuscate)
                assert isinstance(result, Summary)


# ------------------------------------------------------------------------------------------ raw mode


def test_obfuscate_false_keeps_the_raw_text_with_whitespace_folded():
    statement = "SELECT a /* keep */\n  FROM t   WHERE b =   'q  r'  -- note\n   AND c = 5"
    assert summarize(statement, obfuscate=False) == Summary(
        "SELECT a /* keep */ FROM t WHERE b = 'q  r' -- note\nAND c = 5", "SELECT", "t")


def test_obfuscate_false_keeps_line_comments_from_swallowing_the_rest():
    assert summarize("SELECT a # c\n  FROM t", "mysql", obfuscate=False).text == "SELECT a # c\nFROM t"


def test_obfuscate_false_keeps_what_obfuscation_would_refuse():
    assert summarize("SELECT 'open", obfuscate=False).text == "SELECT 'open"
    assert summarize("INSERT INTO t VALUES (1), (2)", obfuscate=False).text == "INSERT INTO t VALUES (1), (2)"


# --------------------------------------------------------------------------------- operation, collection


@pytest.mark.parametrize("dialect, statement, operation, collection", [
    ("generic", "SELECT * FROM users", "SELECT", "users"),
    ("generic", "select * from public.users u where 1=1", "SELECT", "public.users"),
    ("generic", 'SELECT * FROM "Public"."Users"', "SELECT", "Public.Users"),
    ("generic", 'SELECT * FROM "we""ird"', "SELECT", 'we"ird'),
    ("mysql", "SELECT * FROM `shop`.`orders`", "SELECT", "shop.orders"),
    ("mysql", 'SELECT * FROM "not_a_table"', "SELECT", ""),
    ("sqlite", "SELECT * FROM [order details]", "SELECT", "order details"),
    ("generic", "SELECT count(*) FROM (SELECT 1) AS sub", "SELECT", ""),
    ("generic", "SELECT a FROM t1 JOIN t2 ON t1.id = t2.id", "SELECT", "t1"),
    ("generic", "SELECT a FROM t1, t2", "SELECT", "t1"),
    ("generic", "SELECT extract(year FROM ts), (SELECT max(x) FROM y) FROM events", "SELECT", "events"),
    ("generic", "SELECT * FROM generate_series(1, 3)", "SELECT", ""),
    ("generic", "SELECT * FROM LATERAL f(x)", "SELECT", ""),
    ("generic", "SELECT 1", "SELECT", ""),
    ("generic", "(SELECT a FROM t) UNION (SELECT a FROM u)", "SELECT", "t"),
    ("generic", "INSERT INTO users (a) VALUES (1)", "INSERT", "users"),
    ("generic", "insert into users(a) values (1)", "INSERT", "users"),
    ("sqlite", "INSERT OR REPLACE INTO kv VALUES (1)", "INSERT", "kv"),
    ("mysql", "INSERT IGNORE INTO kv VALUES (1)", "INSERT", "kv"),
    ("mysql", "REPLACE INTO kv VALUES (1)", "REPLACE", "kv"),
    ("generic", "UPDATE users SET a = 1", "UPDATE", "users"),
    ("generic", "UPDATE ONLY users SET a = 1", "UPDATE", "users"),
    ("sqlite", "UPDATE OR IGNORE users SET a = 1", "UPDATE", "users"),
    ("mysql", "UPDATE LOW_PRIORITY IGNORE users SET a = 1", "UPDATE", "users"),
    ("generic", "DELETE FROM sessions WHERE id = 1", "DELETE", "sessions"),
    ("postgresql", "DELETE FROM ONLY sessions", "DELETE", "sessions"),
    ("mysql", "DELETE s FROM sessions s JOIN users u ON u.id = s.uid", "DELETE", "sessions"),
    ("generic", "CREATE TABLE IF NOT EXISTS audit (id INT)", "CREATE", "audit"),
    ("generic", "CREATE TEMPORARY TABLE tmp_x AS SELECT 1", "CREATE", "tmp_x"),
    ("generic", "CREATE OR REPLACE TABLE t2 (id INT)", "CREATE", "t2"),
    ("generic", "CREATE INDEX idx ON users (email)", "CREATE", ""),
    ("generic", "ALTER TABLE users ADD COLUMN age INT DEFAULT 0", "ALTER", "users"),
    ("postgresql", "ALTER TABLE IF EXISTS ONLY users DROP COLUMN x", "ALTER", "users"),
    ("generic", "DROP TABLE IF EXISTS old_users, older", "DROP", "old_users"),
    ("generic", "DROP VIEW v", "DROP", ""),
    ("generic", "TRUNCATE TABLE logs", "TRUNCATE", "logs"),
    ("generic", "TRUNCATE logs", "TRUNCATE", "logs"),
    ("postgresql", "COPY users (a, b) FROM STDIN", "COPY", "users"),
    ("postgresql", "COPY (SELECT 1) TO STDOUT", "COPY", ""),
    ("generic", "WITH x AS (SELECT * FROM a) SELECT * FROM x", "SELECT", "x"),
    ("generic", "WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved", "INSERT", "b"),
    ("generic", "WITH x AS (SELECT 1) UPDATE t SET a = 1", "UPDATE", "t"),
    ("generic", "WITH x AS (SELECT 1)", "WITH", ""),
    ("generic", "MERGE INTO target t USING src s ON t.id = s.id", "MERGE", "target"),
    ("generic", "BEGIN", "BEGIN", ""),
    ("generic", "commit", "COMMIT", ""),
    ("generic", "ROLLBACK TO SAVEPOINT sp1", "ROLLBACK", ""),
    ("mysql", "START TRANSACTION", "START", ""),
    ("generic", "CALL refresh_stats(1)", "CALL", ""),
    ("generic", "EXEC sp_who", "EXEC", ""),
    ("generic", "  /* leading */ select 1", "SELECT", ""),
    ("generic", ";; SELECT 1", "SELECT", ""),
    ("generic", "SELECT 1; DELETE FROM t", "SELECT", ""),
    ("sqlite", "PRAGMA table_info(users)", "PRAGMA", ""),
    ("generic", "frobnicate the widgets", "", ""),
    ("generic", "'just a string'", "", ""),
    ("generic", "", "", ""),
])
def test_operation_and_collection(dialect: str, statement: str, operation: str, collection: str):
    for obfuscate in (True, False):
        result = summarize(statement, dialect, obfuscate)
        assert (result.operation, result.collection) == (operation, collection)


def test_an_unsafe_statement_keeps_its_operation_but_names_no_table():
    assert summarize("SELECT 'a FROM zqtable") == Summary("?", "SELECT", "")


def test_span_name():
    assert span_name(Summary("?", "SELECT", "users"), "db") == "SELECT users"
    assert span_name(Summary("?", "SELECT", ""), "db") == "SELECT"
    assert span_name(Summary("?", "", ""), "sqlite.query") == "sqlite.query"
    assert span_name(summarize('INSERT INTO "public"."users" VALUES (1)'), "x") == "INSERT public.users"
    assert span_name(summarize("VACUUM"), "x") == "VACUUM"
    assert span_name(summarize("garbage in"), "postgresql") == "postgresql"


# ------------------------------------------------------------------------------------- dialects, cache


def test_dialect_names():
    statement = "SELECT * FROM t WHERE a = \"zq\""
    assert summarize(statement, "mariadb") is summarize(statement, "mysql")
    assert summarize(statement, "MySQL").text == "SELECT * FROM t WHERE a = ?"
    assert summarize(statement, "oracle") is summarize(statement, "generic")
    assert summarize(statement, None) is summarize(statement)  # type: ignore[arg-type]
    assert summarize(statement, "oracle").text == statement  # double quotes: an identifier


def test_second_call_returns_the_cached_object():
    statement = "SELECT * FROM t WHERE a = 'zq'"
    first = summarize(statement)
    assert summarize(statement) is first
    assert summarize(statement, obfuscate=True) is first
    assert summarize(statement, obfuscate=False) is not first
    clear_cache()
    again = summarize(statement)
    assert again == first and again is not first


def test_cache_is_bounded():
    info = sql._summarize_cached.cache_info()
    assert info.maxsize == CACHE_SIZE
    for i in range(CACHE_SIZE + 100):
        summarize("SELECT * FROM t WHERE id = %d" % i)
    assert sql._summarize_cached.cache_info().currsize == CACHE_SIZE


def test_threads_get_the_same_answers():
    statements = [case.statement for case in CORPUS] * 3
    expected = {s: summarize(s) for s in statements}
    clear_cache()
    failures: List[str] = []

    def work(offset: int) -> None:
        for i in range(len(statements)):
            s = statements[(i + offset) % len(statements)]
            if summarize(s) != expected[s]:
                failures.append(s)

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_apps_sqlparse_is_left_alone():
    assert (T.String.Single, "'a'") in list(sqlparse.lexer.tokenize("SELECT 'a'"))
    assert sqlparse.format("select 'a' from t", keyword_case="upper") == "SELECT 'a' FROM t"


# ------------------------------------------------------------------------------------------ properties

_PIECES = list("abcxyzENXBU&_ ()[]{},;.:=<>!-+*/%#@$?\\\n\t1") + [
    "SELECT ", " FROM ", " IN ", "VALUES", "/*", "*/", "--", "$$", "$a$", "E", "N", "0x", "-", "'", "''"]


def _noise(quotes: bool, double_quote: bool = False):
    pieces = [p for p in _PIECES if quotes or "'" not in p] + (['"'] if double_quote else [])
    return st.lists(st.sampled_from(pieces), max_size=14).map("".join)


def _literal_body(dialect: str, text: str) -> str:
    """`text` as the inside of a '...' literal that is one literal in `dialect`."""
    if dialect == "mysql":
        return text.replace("\\", "\\\\").replace("'", "''")
    if dialect == "generic":  # generic cannot know what a backslash means: leave them out
        return text.replace("\\", "").replace("'", "''")
    return text.replace("'", "''")


@given(st.text(max_size=300), st.sampled_from(DIALECTS), st.booleans())
def test_random_text_never_raises(text: str, dialect: str, obfuscate: bool):
    result = summarize(text, dialect, obfuscate)
    assert isinstance(result, Summary)
    assert all(isinstance(field, str) for field in result)
    assert len(result.text) <= MAX_STATEMENT_LENGTH


@given(st.sampled_from(DIALECTS), st.data(), st.text(max_size=12), st.integers(10 ** 6, 10 ** 12))
def test_digits_opening_a_literal_never_leak(dialect: str, data, inner: str, number: int):
    """Any noise around '<digits>...': if the noise holds a stray quote that pairs with ours, the digits
    start a new token, a number, which is hidden too."""
    noise = _noise(quotes=True, double_quote=dialect == "mysql")
    secret = str(number)
    statement = data.draw(noise) + "'" + secret + _literal_body(dialect, inner) + "'" + data.draw(noise)
    assert secret not in summarize(statement, dialect).text


@given(st.sampled_from(DIALECTS), st.data(), st.text(max_size=12), st.text(max_size=12), st.integers(10 ** 6, 10 ** 12))
def test_literal_between_quote_free_noise_never_leaks(dialect: str, data, before: str, after: str, number: int):
    noise = _noise(quotes=False, double_quote=dialect == "mysql")
    secret = str(number)
    body = _literal_body(dialect, before) + secret + _literal_body(dialect, after)
    statement = data.draw(noise) + "'" + body + "'" + data.draw(noise)
    assert secret not in summarize(statement, dialect).text


@given(st.sampled_from(DIALECTS), st.booleans(), st.lists(st.sampled_from(_PIECES + ['"', "`"]), max_size=30))
def test_fallback_lexer_matches_the_sqlparse_engine(dialect: str, backslash: bool, pieces: List[str]):
    """For sqlparse < 0.4.4 the same rule table runs in a plain loop; it must lex exactly alike."""
    text = "".join(pieces)
    rules = sql._rules(dialect, backslash)
    assert sql._lex(sql._PlainLexer(rules), text) == sql._lex(sql._make_lexer(dialect, backslash), text)
