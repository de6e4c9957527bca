//! What a span may say about a SQL statement: the text with every literal replaced by `?`,
//! the operation (`SELECT`, `INSERT`, ...) and, for single-table statements, the table.
//!
//! This is a tokenizer, not a parser: it knows PostgreSQL's literal forms (strings with
//! their `E`/`B`/`X`/`N`/`U&` prefixes, dollar quoting, numbers) and comments, and reads
//! the operation and table from the first words of the statement. Text cut off by the
//! capture prefix is handled: an unterminated literal is masked to the end.
use std::sync::Arc;

/// Statement keywords accepted as `db.operation.name`; any other first word is `OTHER`, so
/// that garbage or typos cannot create label values without bound.
const OPERATIONS: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "IMPORT",
    "INSERT",
    "LISTEN",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REASSIGN",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SECURITY",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "VACUUM",
    "VALUES",
];

/// Words that end a single-table FROM clause (after the table and an optional alias).
const AFTER_TABLE: &[&str] = &[
    "WHERE",
    "GROUP",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FOR",
    "HAVING",
    "WINDOW",
    "FETCH",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "RETURNING",
    "SET",
    "VALUES",
    "DEFAULT",
    "SELECT",
    "USING",
    "TO",
    "FROM",
    "WITH",
    "ON",
    "OVERRIDING",
];

/// Words that can never be an alias.
const NOT_ALIAS: &[&str] = &[
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "NATURAL",
    "LATERAL",
    "TABLESAMPLE",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlSummary {
    /// The statement with literals as `?`, comments dropped and whitespace collapsed.
    /// (Shared: every execution of a prepared statement reports these.)
    pub masked: Arc<str>,
    /// Upper-case statement keyword, `OTHER` when unrecognised, None for empty text.
    pub operation: Option<Arc<str>>,
    /// The table of a single-table statement.
    pub collection: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// An unquoted word (keyword or identifier), as written.
    Word(String),
    /// A double-quoted identifier, without its quotes.
    Quoted(String),
    Punct(u8),
    /// Any literal (already masked in the text) or a `$n` parameter.
    Value,
}

/// At most this many structural tokens (at parenthesis depth 0) are kept for analysis.
const MAX_TOKENS: usize = 64;

pub fn summarize(sql: &str) -> SqlSummary {
    let (masked, tokens, first_word) = scan(sql);
    let operation = operation(first_word, &tokens);
    let collection = operation.as_deref().and_then(|op| collection(op, &tokens));
    SqlSummary {
        masked: masked.into(),
        operation: operation.map(Arc::from),
        collection: collection.map(Arc::from),
    }
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// One pass over the text: builds the masked text, the depth-0 tokens and the first word
/// at any depth (`(SELECT ...) UNION ...` starts inside parentheses).
fn scan(sql: &str) -> (String, Vec<Token>, Option<String>) {
    let mut first_word = None;
    let b = sql.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut space = false;
    let mut i = 0;
    // Pushes a piece of output, with one space before it if whitespace preceded it.
    let emit = |out: &mut Vec<u8>, piece: &[u8], space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(b' ');
        }
        *space = false;
        out.extend_from_slice(piece);
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p);
            space = true;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = skip_block_comment(b, i);
            space = true;
        } else if c == b'\'' {
            i = skip_string(b, i + 1, false);
            emit(&mut out, b"?", &mut space);
            push(&mut tokens, depth, Token::Value);
        } else if c == b'"' {
            let (end, ident) = quoted_ident(b, i + 1);
            emit(&mut out, &b[i..end], &mut space);
            push(&mut tokens, depth, Token::Quoted(ident));
            i = end;
        } else if c == b'$' {
            if let Some(end) = dollar_quote_end(b, i) {
                emit(&mut out, b"?", &mut space);
                push(&mut tokens, depth, Token::Value);
                i = end;
            } else {
                // `$1`: a parameter, kept as written.
                let end = i + 1 + b[i + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
                emit(&mut out, &b[i..end], &mut space);
                push(&mut tokens, depth, Token::Value);
                i = end;
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            i = skip_number(b, i);
            emit(&mut out, b"?", &mut space);
            push(&mut tokens, depth, Token::Value);
        } else if is_word_start(c) {
            let end = i + b[i..].iter().take_while(|&&x| is_word_char(x)).count();
            let word = &b[i..end];
            if let Some(after) = prefixed_string(b, word, end) {
                emit(&mut out, b"?", &mut space);
                push(&mut tokens, depth, Token::Value);
                i = after;
                continue;
            }
            emit(&mut out, word, &mut space);
            if first_word.is_none() {
                first_word = Some(String::from_utf8_lossy(word).to_ascii_uppercase());
            }
            push(
                &mut tokens,
                depth,
                Token::Word(String::from_utf8_lossy(word).into_owned()),
            );
            i = end;
        } else {
            emit(&mut out, &[c], &mut space);
            if c == b')' {
                depth = depth.saturating_sub(1);
            }
            push(&mut tokens, depth, Token::Punct(c));
            if c == b'(' {
                depth += 1;
            }
            i += 1;
        }
    }
    // Only whole characters were copied or replaced, so this is valid UTF-8 again.
    (
        String::from_utf8_lossy(&out).into_owned(),
        tokens,
        first_word,
    )
}

fn push(tokens: &mut Vec<Token>, depth: usize, t: Token) {
    if depth == 0 && tokens.len() < MAX_TOKENS {
        tokens.push(t);
    }
}

/// `/* ... */`, nested as PostgreSQL allows. Returns the index after it (or the end).
fn skip_block_comment(b: &[u8], start: usize) -> usize {
    let mut level = 0;
    let mut i = start;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                level += 1;
                i += 2;
            }
            (b'*', b'/') => {
                level -= 1;
                i += 2;
                if level == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// The body of a '...' literal starting at `i` (after the quote); `''` is an escaped quote,
/// and with `backslash` (E'...') so is `\'`. Returns the index after the closing quote.
fn skip_string(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// A literal with a prefix: E'..', B'..', X'..', N'..', U&'..'. Returns the index after it.
fn prefixed_string(b: &[u8], word: &[u8], end: usize) -> Option<usize> {
    let quote_at = match word {
        [p] if b"eEbBxXnN".contains(p) => end,
        [b'u' | b'U'] if b.get(end) == Some(&b'&') => end + 1,
        _ => return None,
    };
    if b.get(quote_at) != Some(&b'\'') {
        return None;
    }
    let backslash = matches!(word, [b'e' | b'E']);
    Some(skip_string(b, quote_at + 1, backslash))
}

fn quoted_ident(b: &[u8], mut i: usize) -> (usize, String) {
    let mut ident = Vec::new();
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                ident.push(b'"');
                i += 2;
                continue;
            }
            return (i + 1, String::from_utf8_lossy(&ident).into_owned());
        }
        ident.push(b[i]);
        i += 1;
    }
    (b.len(), String::from_utf8_lossy(&ident).into_owned())
}

/// `$tag$ ... $tag$` (tag possibly empty) starting at `i`: the index after the closing tag.
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    let tag_len = b[i + 1..]
        .iter()
        .take_while(|&&c| is_word_char(c) && c != b'$')
        .count();
    if b.get(i + 1).is_some_and(u8::is_ascii_digit) || b.get(i + 1 + tag_len) != Some(&b'$') {
        return None;
    }
    let tag = &b[i..i + tag_len + 2];
    let body = i + tag.len();
    Some(
        b[body..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map_or(b.len(), |p| body + p + tag.len()),
    )
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        return i + b[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit() || **c == b'_')
            .count();
    }
    while i < b.len() {
        match b[i] {
            b'0'..=b'9' | b'.' | b'_' => i += 1,
            b'e' | b'E' => {
                i += 1;
                if matches!(b.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    i
}

fn upper(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    }
}

fn operation(first_word: Option<String>, tokens: &[Token]) -> Option<String> {
    let word = first_word?;
    if word == "WITH" {
        // The statement after the common table expressions (their bodies are in parens).
        let main = tokens.iter().skip(1).filter_map(upper).find(|w| {
            matches!(
                w.as_str(),
                "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE"
            )
        });
        return Some(main.unwrap_or_else(|| "WITH".into()));
    }
    if OPERATIONS.contains(&word.as_str()) {
        Some(word)
    } else {
        Some("OTHER".into())
    }
}

/// The table of a single-table SELECT, INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE.
fn collection(op: &str, tokens: &[Token]) -> Option<String> {
    let words: Vec<Option<String>> = tokens.iter().map(upper).collect();
    let is = |i: usize, w: &str| words.get(i).and_then(|x| x.as_deref()) == Some(w);
    let position = |w: &str| (0..tokens.len()).find(|&i| is(i, w));
    let mut at = match op {
        "SELECT" => position("FROM")? + 1,
        "INSERT" | "MERGE" => position("INTO")? + 1,
        "DELETE" => position("FROM")? + 1,
        "UPDATE" => position("UPDATE")? + 1,
        "COPY" => position("COPY")? + 1,
        "TRUNCATE" => {
            let t = position("TRUNCATE")? + 1;
            if is(t, "TABLE") {
                t + 1
            } else {
                t
            }
        }
        _ => return None,
    };
    if is(at, "ONLY") {
        at += 1;
    }
    let (name, mut next) = qualified_name(tokens, at)?;
    if op == "INSERT" || op == "COPY" {
        // INSERT INTO t (cols) / COPY t (cols): the column list is not a second table.
        return Some(name);
    }
    // An optional alias, then the clause must end or go on with a non-table keyword.
    if is(next, "AS") {
        next += 1;
    }
    if let Some(Token::Word(w)) = tokens.get(next) {
        let w = w.to_ascii_uppercase();
        if !AFTER_TABLE.contains(&w.as_str()) && !NOT_ALIAS.contains(&w.as_str()) {
            next += 1;
        }
    }
    match tokens.get(next) {
        None | Some(Token::Punct(b';')) => Some(name),
        Some(Token::Word(w)) if AFTER_TABLE.contains(&w.to_ascii_uppercase().as_str()) => {
            Some(name)
        }
        _ => None,
    }
}

/// `name`, `schema.name` or quoted parts at `at`: the name and the index after it.
fn qualified_name(tokens: &[Token], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match tokens.get(at)? {
            Token::Word(w) | Token::Quoted(w) => name.push_str(w),
            _ => return None,
        }
        at += 1;
        if tokens.get(at) == Some(&Token::Punct(b'.')) {
            name.push('.');
            at += 1;
        } else {
            return Some((name, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str, masked: &str, op: &str, collection: Option<&str>) {
        let s = summarize(sql);
        assert_eq!(&*s.masked, masked, "{sql}");
        assert_eq!(s.operation.as_deref(), Some(op), "{sql}");
        assert_eq!(s.collection.as_deref(), collection, "{sql}");
    }

    #[test]
    fn pgbench_statements() {
        check(
            "UPDATE pgbench_accounts SET abalance = abalance + -4217 WHERE aid = 31;",
            "UPDATE pgbench_accounts SET abalance = abalance + -? WHERE aid = ?;",
            "UPDATE",
            Some("pgbench_accounts"),
        );
        check(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "SELECT",
            Some("pgbench_accounts"),
        );
        check(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 31, -4217, CURRENT_TIMESTAMP);",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (?, ?, ?, -?, CURRENT_TIMESTAMP);",
            "INSERT",
            Some("pgbench_history"),
        );
        check("BEGIN;", "BEGIN;", "BEGIN", None);
        check("END;", "END;", "END", None);
    }

    #[test]
    fn every_literal_form_is_masked() {
        check(
            "select * from users where name = 'O''Brien' and pw = E'se\\'cret' \
             and b = B'0101' and x = X'FF' and n = N'nat' and u = U&'d\\0061t' \
             and d = $tag$dollar 'quoted'$tag$ and e = $$x$$ and f = 1.5e-3 and h = 0xFF",
            "select * from users where name = ? and pw = ? and b = ? and x = ? and n = ? \
             and u = ? and d = ? and e = ? and f = ? and h = ?",
            "SELECT",
            Some("users"),
        );
    }

    #[test]
    fn comments_are_dropped_and_identifiers_kept() {
        check(
            "/* app: billing /* nested */ token=abc */ SELECT \"Weird\"\"Name\", t1.c2 -- 'x'\n FROM public.\"Orders\" o WHERE o.id = 7",
            "SELECT \"Weird\"\"Name\", t1.c2 FROM public.\"Orders\" o WHERE o.id = ?",
            "SELECT",
            Some("public.Orders"),
        );
    }

    #[test]
    fn text_cut_inside_a_literal_masks_to_the_end() {
        check(
            "INSERT INTO t VALUES ('secret text that was cut",
            "INSERT INTO t VALUES (?",
            "INSERT",
            Some("t"),
        );
        check("SELECT $q$ never closed", "SELECT ?", "SELECT", None);
    }

    #[test]
    fn collection_only_for_single_table_statements() {
        let none = |sql: &str| assert_eq!(summarize(sql).collection, None, "{sql}");
        none("SELECT 1");
        none("SELECT * FROM a, b WHERE a.id = b.id");
        none("SELECT * FROM a JOIN b ON a.id = b.id");
        none("SELECT * FROM a AS x LEFT JOIN b ON true");
        none("SELECT * FROM generate_series(1, 10)");
        none("SELECT * FROM (SELECT 1) s");
        let some =
            |sql: &str, t: &str| assert_eq!(summarize(sql).collection.as_deref(), Some(t), "{sql}");
        some("select count(*) from pgbench_branches", "pgbench_branches");
        some("SELECT * FROM items AS i ORDER BY i.id LIMIT 5", "items");
        some("DELETE FROM ONLY jobs WHERE id = 1 RETURNING id", "jobs");
        some("UPDATE q SET x = 1", "q");
        some(
            "COPY pgbench_accounts (aid, bid) FROM STDIN",
            "pgbench_accounts",
        );
        some("TRUNCATE TABLE pgbench_history", "pgbench_history");
        some(
            "WITH x AS (SELECT 1) SELECT * FROM t WHERE y IN (SELECT 2)",
            "t",
        );
    }

    #[test]
    fn operations() {
        let op = |sql: &str| summarize(sql).operation;
        assert_eq!(op("  (select 1)").as_deref(), Some("SELECT"));
        assert_eq!(
            op("with a as (select 1) delete from t").as_deref(),
            Some("DELETE")
        );
        assert_eq!(op("SELEC oops").as_deref(), Some("OTHER"));
        assert_eq!(op("   -- only a comment"), None);
        assert_eq!(op(""), None);
    }

    #[test]
    fn garbage_never_panics() {
        let samples: [&[u8]; 8] = [b"'", b"$", b"$$", b"$a", b"E'\\", b"/*", b"\"", b"0x"];
        for s in samples {
            summarize(&String::from_utf8_lossy(s));
        }
        let mut g = crate::testing::Garbage::new(7);
        for _ in 0..2000 {
            let bytes = g.bytes(b"'\"$-/*.0123eEuU&xX ()abc;\n\\", 40);
            summarize(&String::from_utf8_lossy(&bytes));
        }
    }
}
