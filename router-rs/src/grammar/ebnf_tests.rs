//! EBNF grammars (ebnf.rs): what their output may be, the masks on random walks against the
//! brute force (every whole walk a sentence of the grammar), and the grammars refused.

use std::sync::Arc;

use super::tests::{accepts, vocab, whole_documents_in};
use super::*;

fn g(text: &str) -> Arc<Grammar> {
    ebnf(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

const JSONISH: &str = r#"
# a small JSON-like language: recursion through value, repetition, classes, escapes
root   ::= value
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( pair ( "," ws pair )* )? "}"
pair   ::= string ":" ws value ws
array  ::= "[" ( value ( "," ws value )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1F] | "\\" ["\\nt] )* "\""
number ::= "-"? [0-9]+ ( "." [0-9]{1,3} )?
ws     ::= [ \t\n]{0,2}
"#;

#[test]
fn sentences_of_the_grammar_are_taken_and_no_others() {
    let j = g(JSONISH);
    for ok in [
        "null",
        "-12.5",
        r#"{"a": [1,2, "x\"y"],"b":{}}"#,
        "[[],[[true]]]",
        r#""日本\n""#,
    ] {
        assert!(accepts(&j, ok), "{ok}");
    }
    for bad in [
        "nul",
        "1.2345",
        r#"{"a" : 1}"#,
        "[1,]",
        "\"a\nb\"",
        " null",
        "null ",
    ] {
        assert!(!accepts(&j, bad), "{bad}");
    }
    let yes_no = g("root ::= ( \"yes\" | 'no' ) \"!\"{2} [a-c-]?\n");
    for ok in ["yes!!", "no!!", "no!!-", "yes!!b"] {
        assert!(accepts(&yes_no, ok), "{ok}");
    }
    for bad in ["yes!", "maybe!!", "no!!d", "no!!!"] {
        assert!(!accepts(&yes_no, bad), "{bad}");
    }
    // right recursion, and a root that may be empty
    let nested = g("root ::= \"(\" root \")\" root | \"\"");
    for ok in ["", "()", "(())()", "((()))"] {
        assert!(accepts(&nested, ok), "{ok}");
    }
    for bad in ["(", "())", ")("] {
        assert!(!accepts(&nested, bad), "{bad}");
    }
    // any character, escapes in strings and classes
    let any = g(r#"root ::= . "\x41\u00e9\t" [\]\-]"#);
    assert!(accepts(&any, "日Aé\t]"));
    assert!(accepts(&any, "xAé\t-"));
    assert!(!accepts(&any, "xAé\t\\"));
}

#[test]
fn masks_equal_the_brute_force_and_every_walk_is_a_sentence() {
    let v = vocab();
    let words = regex_automata::meta::Regex::new(r"^(?:[a-z]+ )*\.$").expect("a regex");
    for (text, seed, check) in [
        (JSONISH, 1, None),
        ("root ::= ( [a-z]+ \" \" )* \".\"", 2, Some(&words)),
    ] {
        let grammar = g(text);
        let docs = whole_documents_in(&grammar, &v, seed, 32, 400);
        assert!(docs.len() >= 4, "only {} whole sentences", docs.len());
        for doc in docs {
            let s = String::from_utf8(doc).expect("UTF-8");
            assert!(accepts(&grammar, &s), "{s}");
            assert!(check.is_none_or(|r| r.is_match(&s)), "{s}");
        }
    }
}

#[test]
fn what_the_walk_could_not_finish_or_read_is_refused() {
    for (text, why) in [
        ("root ::= a | \"z\"\na ::= \"b\"? root", "left-recursive"),
        ("root ::= (\"a\"?)*", "can be empty"),
        (
            "root ::= \"a\" | \"b\" tail\ntail ::= \"c\" tail",
            "tail never ends",
        ),
        ("root ::= item\n", "item is used but not defined"),
        ("start ::= \"a\"", "no rule named root"),
        ("root ::= \"a\"\nroot ::= \"b\"", "defined twice"),
        ("root ::= \"a", "not closed"),
        ("root ::= [a-", "not closed"),
        ("root ::= ( \"a\"", "not closed"),
        ("root ::= \"a\"{3,2}", "bad `{m,n}`"),
        ("root := \"a\"", "unexpected"),
        ("\"a\"", "expected"),
        ("root ::= \"\\q\"", "bad escape"),
    ] {
        let got = ebnf(text)
            .err()
            .unwrap_or_else(|| panic!("{text} compiled"));
        assert!(got.to_string().contains(why), "{text}: {got}");
    }
    // right recursion and bounded repetition of what may be empty are fine
    assert!(ebnf("root ::= \"a\" root | \"\"").is_ok());
    // a rule's own left recursion is rewritten as repetition (left_recursion.rs)
    let left = g("root ::= root \"a\" | root \"c\" | \"b\"");
    for ok in ["b", "baca", "bcc"] {
        assert!(accepts(&left, ok), "{ok}");
    }
    assert!(!accepts(&left, "ab") && !accepts(&left, ""));
    assert!(ebnf("root ::= (\"a\"?){0,3}").is_ok());
}

#[test]
fn recursion_past_the_depth_cap_ends_the_walk() {
    let nested = g("root ::= \"(\" root \")\" | \"x\"");
    let nest = |n: usize| format!("{}x{}", "(".repeat(n), ")".repeat(n));
    assert!(accepts(&nested, &nest(50)));
    assert!(accepts(&nested, &nest(step_raw::MAX_RAW_DEPTH)));
    assert!(!accepts(&nested, &nest(step_raw::MAX_RAW_DEPTH + 1)));
}
