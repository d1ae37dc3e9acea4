//! Grammars in Lark's notation (lark.rs), read through the EBNF reader: the sentences they take,
//! against the same language written in GBNF, and what is refused.

use std::sync::Arc;

use super::tests::{accepts, vocab, whole_documents_in};
use super::*;

fn g(text: &str) -> Arc<Grammar> {
    ebnf(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A calculator language as Lark examples write it.
const CALC: &str = r#"
// arithmetic over numbers and names
?start: sum
?sum: product
    | sum "+" product   -> add
    | sum "-" product   -> sub
?product: atom
    | product "*" atom  -> mul
?atom: NUMBER           -> number
     | "-" atom         -> neg
     | NAME             -> var
     | "(" sum ")"
NAME: /[a-z_]\w*/
%import common.NUMBER
%import common.WS_INLINE
%ignore WS_INLINE
"#;

#[test]
fn a_lark_grammar_takes_its_sentences_and_no_others() {
    let calc = g(CALC);
    for ok in ["1", "x+2*y", "-(a-3.5)*2", "((x))", "2e10-b_1"] {
        assert!(accepts(&calc, ok), "{ok}");
    }
    // `%ignore` is skipped: no text the grammar does not spell
    for bad in ["", "1+", "x y", "1 + 2", "(x", "X"] {
        assert!(!accepts(&calc, bad), "{bad}");
    }
    let options = g(r#"
start: greeting ["," NAME] "!"~1..3
greeting: "hello"i | "hi"
NAME: "a".."z"+
"#);
    for ok in ["hello!", "HeLLo,bob!!", "hi,x!!!"] {
        assert!(accepts(&options, ok), "{ok}");
    }
    for bad in ["HI!", "hello,!", "hello!!!!", "hello,Bob!"] {
        assert!(!accepts(&options, bad), "{bad}");
    }
    // `::=` in a string or a comment is Lark's text, not a GBNF rule; signed priorities
    let bnf = g("start: NAME \"::=\" NAME  // a ::= b\nNAME.-1: /[a-z]+/\n");
    assert!(accepts(&bnf, "x::=y") && !accepts(&bnf, "x::="));
    // an alternative that is the rule alone adds nothing
    let bare = g("start: a\na: a | \"c\"\n");
    assert!(accepts(&bare, "c") && !accepts(&bare, "cc"));
}

#[test]
fn lark_and_gbnf_spellings_of_one_language_agree_on_random_walks() {
    let lark = g(r#"
start: item ("," item)*
item: ESCAPED_STRING | SIGNED_INT | "[" [start] "]"
%import common (ESCAPED_STRING, SIGNED_INT)
"#);
    let gbnf = g(r#"
root ::= item ("," item)*
item ::= string | [+-]? [0-9]+ | "[" root? "]"
string ::= "\"" ( [^"\\\n] | "\\" [^\n] )* "\""
"#);
    let v = vocab();
    for seed in 0..4 {
        for doc in whole_documents_in(&lark, &v, seed, 30, 80) {
            assert!(accepts(&gbnf, &String::from_utf8_lossy(&doc)), "{doc:?}");
        }
        for doc in whole_documents_in(&gbnf, &v, seed, 30, 80) {
            assert!(accepts(&lark, &String::from_utf8_lossy(&doc)), "{doc:?}");
        }
    }
}

#[test]
fn what_lark_grammars_cannot_say_here_is_refused() {
    for (text, why) in [
        ("start: x\n", "x is used but not defined"),
        ("rule: \"a\"\n", "no rule named start"),
        ("start: \"a\"\n%declare X\n", "%declare"),
        ("start: \"a\"\n%import other.X\n", "only common terminals"),
        ("start: \"a\"\n%import common.NOPE\n", "not known"),
        ("start: /a/m\n", "flag m"),
        ("start: \"a\" ]\n", "closes nothing"),
        ("start: [\"a\"\n", "not closed"),
        ("_sep{x}: x\nstart: \"a\"\n", "templates"),
        ("start: \"ab\"..\"z\"\n", "single characters"),
        ("start: x \"a\" | \"b\"\nx: start\n", "left-recursive"),
        ("start: start \"a\"* | \"b\"\n", "left-recursive"),
        ("start: \"a\" ~ 4000000000\n", "at most"),
    ] {
        let e = ebnf(text)
            .err()
            .unwrap_or_else(|| panic!("{text} was taken"));
        assert!(e.to_string().contains(why), "{text}: {e}");
    }
}
