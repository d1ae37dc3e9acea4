//! Immediate left recursion rewritten away, on the EBNF reader's tokens (ebnf.rs): a rule
//! `a ::= a x | a y | b | c` becomes `a ::= (b | c) (x | y)*`, which says the same. Grammars
//! written for LR parsers (Lark's examples) lean on it; the matcher's walk cannot take it.
//! Recursion through other rules first is left as it is (and refused by the reader's checks).

use super::ebnf::Tok;

/// `toks` with every rule's immediate left recursion rewritten.
pub fn removed(toks: Vec<(Tok, usize)>) -> Vec<(Tok, usize)> {
    let starts: Vec<usize> = (0..toks.len())
        .filter(|&i| {
            matches!(toks[i].0, Tok::Name(_)) && toks.get(i + 1).is_some_and(|t| t.0 == Tok::Define)
        })
        .collect();
    let mut out = Vec::with_capacity(toks.len());
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(toks.len());
        if k == 0 {
            out.extend_from_slice(&toks[..start]);
        }
        let Tok::Name(name) = &toks[start].0 else {
            unreachable!("a rule starts with its name")
        };
        out.extend_from_slice(&toks[start..start + 2]);
        out.extend(rewritten(name, &toks[start + 2..end]));
    }
    if starts.is_empty() {
        return toks;
    }
    out
}

/// A rule body's top-level alternatives.
fn alternatives(body: &[(Tok, usize)]) -> Vec<&[(Tok, usize)]> {
    let (mut alts, mut depth, mut from) = (Vec::new(), 0usize, 0);
    for (i, (tok, _)) in body.iter().enumerate() {
        match tok {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            Tok::Bar if depth == 0 => {
                alts.push(&body[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    alts.push(&body[from..]);
    alts
}

/// The body of rule `name` without immediate left recursion (as it is when it has none, or
/// nothing else to start from).
fn rewritten(name: &str, body: &[(Tok, usize)]) -> Vec<(Tok, usize)> {
    let alts = alternatives(body);
    let recursive = |alt: &&[(Tok, usize)]| {
        matches!(alt.first(), Some((Tok::Name(n), _)) if n == name)
            && !matches!(
                alt.get(1),
                Some((Tok::Star | Tok::Plus | Tok::Question | Tok::Bound(..), _))
            )
    };
    let (tails, bases): (Vec<_>, Vec<_>) = alts.into_iter().partition(recursive);
    let bare = tails.len();
    // `a: a | ...` adds nothing; a tail that may read nothing (`a: a "x"*`) has no rewrite that
    // the reader takes, so the rule stays as written (and is refused as left-recursive)
    let tails: Vec<_> = tails.into_iter().filter(|t| t.len() > 1).collect();
    let bare = bare - tails.len();
    if bases.is_empty() || tails.iter().any(|t| may_be_empty(&t[1..])) || tails.len() + bare == 0 {
        return body.to_vec();
    }
    let line = body.first().map_or(0, |t| t.1);
    if tails.is_empty() {
        return group(bases, 0, line);
    }
    let mut out = group(bases, 0, line);
    out.extend(group(tails, 1, line));
    out.push((Tok::Star, line));
    out
}

/// `( part | part ... )`, each part without its first `skip` tokens.
fn group(parts: Vec<&[(Tok, usize)]>, skip: usize, line: usize) -> Vec<(Tok, usize)> {
    let mut out = vec![(Tok::Open, line)];
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push((Tok::Bar, line));
        }
        out.extend_from_slice(&part[skip..]);
    }
    out.push((Tok::Close, line));
    out
}

/// Whether a sequence of items surely may read nothing: every item is optional (`?`, `*`,
/// `{0,…}`) or an empty string. Conservative: a rule's name or a group counts as reading.
fn may_be_empty(items: &[(Tok, usize)]) -> bool {
    let mut i = 0;
    while i < items.len() {
        let empty_item = matches!(&items[i].0, Tok::Text(t) if t.is_empty());
        let mut end = i + 1;
        if matches!(items[i].0, Tok::Open) {
            let mut depth = 0;
            for (j, (tok, _)) in items.iter().enumerate().skip(i) {
                match tok {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = j + 1;
                    break;
                }
            }
        }
        let optional = matches!(
            items.get(end).map(|t| &t.0),
            Some(Tok::Star | Tok::Question | Tok::Bound(0, _))
        );
        if !(empty_item || optional) {
            return false;
        }
        i = end;
        while matches!(
            items.get(i).map(|t| &t.0),
            Some(Tok::Star | Tok::Plus | Tok::Question | Tok::Bound(..))
        ) {
            i += 1;
        }
    }
    true
}
