use super::*;

/// Feeds `chunks` and returns (all emitted text, stopped, chunk index of the stop).
fn run(stops: &[&str], chunks: &[&str]) -> (String, bool, Option<usize>) {
    let mut m = StopMatcher::new(stops.iter().copied());
    let mut out = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let (emit, stopped) = m.push(chunk);
        out.push_str(&emit);
        if stopped {
            return (out, true, Some(i));
        }
    }
    let (tail, stopped) = m.finish();
    out.push_str(&tail);
    (out, stopped, None)
}

#[test]
fn stop_split_across_many_chunks_is_found_and_excluded() {
    let (out, stopped, at) = run(
        &["</answer>"],
        &["The end", "<", "/an", "s", "wer", "> tail"],
    );
    assert_eq!((out.as_str(), stopped, at), ("The end", true, Some(5)));
}

#[test]
fn unchecked_text_ends_no_match_but_may_begin_one() {
    let mut m = StopMatcher::new(["abc", "b"]);
    // "b" ends in the unchecked text; "ab" may begin "abc", so it is held
    assert_eq!(m.push_unchecked("xab"), "x");
    assert_eq!(m.push("c tail"), (String::new(), true));
    assert_eq!(m.matched(), Some("abc"));
    // the held "ab" released: "b" within it stays unmatched, the next "b" stops
    let mut m = StopMatcher::new(["abc", "b"]);
    assert_eq!(m.push_unchecked("xab"), "x");
    assert_eq!(m.push("xyb!"), ("abxy".to_string(), true));
    assert_eq!(m.matched(), Some("b"));
    // a whole stop string at the end of unchecked text: only a tail that may begin a later
    // match is held
    let mut m = StopMatcher::new(["éé"]);
    assert_eq!(m.push_unchecked("aéé"), "aé");
    assert_eq!(m.push("x"), ("éx".to_string(), false));
    // the search for "bc" would start inside the held "é": it starts after it
    let mut m = StopMatcher::new(["bc", "aéé"]);
    assert_eq!(m.push_unchecked("aé"), "");
    assert_eq!(m.push("bc"), ("aé".to_string(), true));
    let mut m = StopMatcher::new(["éé"]);
    assert_eq!(m.push_unchecked("é"), "");
    assert_eq!(m.push("é"), (String::new(), true));
    assert_eq!(m.finish(), (String::new(), true));
    // without stop strings nothing is held
    assert_eq!(
        StopMatcher::new(Vec::<String>::new()).push_unchecked("ab"),
        "ab"
    );
}

#[test]
fn an_included_stop_string_is_emitted_and_what_follows_is_not() {
    let mut m = StopMatcher::new(["</a>", "b"]).including_match(true);
    assert_eq!(m.push("x</"), ("x".to_string(), false));
    assert_eq!(m.push("a> tail b"), ("</a>".to_string(), true));
    assert_eq!(m.matched(), Some("</a>"));
}

#[test]
fn a_partial_stop_is_held_then_released_when_it_diverges() {
    let mut m = StopMatcher::new(["STOP"]);
    assert_eq!(m.push("abST"), ("ab".to_string(), false));
    assert_eq!(m.push("O"), (String::new(), false));
    assert_eq!(m.push("P!"), (String::new(), true));
    assert_eq!(m.matched(), Some("STOP"));
    assert_eq!(m.push("more"), (String::new(), true));
    let mut m = StopMatcher::new(["STOP"]);
    assert_eq!(m.push("xST"), ("x".to_string(), false));
    assert_eq!(m.push("Ox"), ("STOx".to_string(), false));
    assert_eq!(m.finish(), (String::new(), false));
}

#[test]
fn overlapping_stops_match_at_the_earliest_position() {
    let (out, stopped, _) = run(&["bcd", "abcx", "cd"], &["xxab", "cd"]);
    assert_eq!((out.as_str(), stopped), ("xxa", true));
    let mut m = StopMatcher::new(["aab", "ab"]);
    assert_eq!(m.push("a").0, "");
    assert_eq!(m.push("a").0, "");
    assert_eq!(m.push("ab"), ("a".to_string(), true));
    assert_eq!(m.matched(), Some("aab"));
}

#[test]
fn a_whole_stop_waits_for_an_earlier_one_still_in_progress() {
    // "/" is whole at byte 3 while "b/<" may still begin at byte 2: the text after "é" is
    // held until the next piece decides which stop string comes first.
    let mut m = StopMatcher::new(["b/<", "/"]);
    assert_eq!(m.push("éb/"), ("é".to_string(), false));
    assert_eq!(m.push("<x"), (String::new(), true));
    assert_eq!(m.matched(), Some("b/<"));
    let mut m = StopMatcher::new(["b/<", "/"]);
    assert_eq!(m.push("éb/"), ("é".to_string(), false));
    assert_eq!(m.push("x"), ("b".to_string(), true));
    assert_eq!(m.matched(), Some("/"));
    // The output ends while the earlier one is undecided: the whole one stops it.
    let mut m = StopMatcher::new(["b/<", "/"]).including_match(true);
    assert_eq!(m.push("éb/"), ("é".to_string(), false));
    assert_eq!(m.finish(), ("b/".to_string(), true));
    assert_eq!(m.matched(), Some("/"));
}

#[test]
fn no_stop_strings_means_no_hold_back() {
    let mut m = StopMatcher::new(Vec::<String>::new());
    assert_eq!(m.push("<"), ("<".to_string(), false));
    let mut m = StopMatcher::new([""]);
    assert_eq!(m.push("abc"), ("abc".to_string(), false));
    assert!(!m.is_stopped());
}

#[test]
fn unmatched_tail_comes_out_on_finish() {
    let (out, stopped, _) = run(&["###"], &["a#", "#"]);
    assert_eq!((out.as_str(), stopped), ("a##", false));
}

#[test]
fn multibyte_text_is_held_on_character_boundaries() {
    let (out, stopped, _) = run(&["。\n"], &["你好", "。", "\n后"]);
    assert_eq!((out.as_str(), stopped), ("你好", true));
    let (out, stopped, _) = run(&["é!"], &["aé", "é", "x"]);
    assert_eq!((out.as_str(), stopped), ("aééx", false));
}

#[test]
fn every_split_of_a_text_gives_the_same_result() {
    let text = "one two <stop> three";
    for cut1 in 0..=text.len() {
        for cut2 in cut1..=text.len() {
            let chunks = [&text[..cut1], &text[cut1..cut2], &text[cut2..]];
            let (out, stopped, _) = run(&["<stop>", "two  "], &chunks);
            assert_eq!((out.as_str(), stopped), ("one two ", true), "{chunks:?}");
        }
    }
}

/// The text before the earliest stop in the whole text, as a one-shot search finds it.
fn one_shot(stops: &[String], text: &str) -> (String, bool) {
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match hit {
        Some(at) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}

/// `one_shot` where no match may end within the first `unchecked` bytes.
fn one_shot_after(stops: &[String], text: &str, unchecked: usize) -> (String, bool) {
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            (0..=text.len())
                .filter(|&at| text.is_char_boundary(at))
                .find(|&at| text[at..].starts_with(s.as_str()) && at + s.len() > unchecked)
        })
        .min();
    match hit {
        Some(at) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}

proptest::proptest! {
    #[test]
    fn unchecked_text_then_streaming_equals_one_shot(
        text in "[ab<>/é]{0,30}",
        stops in proptest::collection::vec("[ab<>/é]{0,4}", 0..4),
        cuts in proptest::collection::vec(0usize..30, 0..6),
        unchecked in 0usize..30,
    ) {
        let unchecked = (unchecked.min(text.len())..=text.len())
            .find(|&b| text.is_char_boundary(b))
            .unwrap_or(text.len());
        let mut bounds: Vec<usize> = cuts
            .into_iter()
            .map(|c| c.min(text.len()))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        bounds.extend([0, unchecked, text.len()]);
        bounds.sort_unstable();
        let mut m = StopMatcher::new(stops.iter().cloned());
        let (mut out, mut stopped) = (String::new(), false);
        for w in bounds.windows(2) {
            let chunk = &text[w[0]..w[1]];
            if w[1] <= unchecked {
                out.push_str(&m.push_unchecked(chunk));
            } else {
                let (emit, hit) = m.push(chunk);
                out.push_str(&emit);
                if hit {
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            let (tail, hit) = m.finish();
            out.push_str(&tail);
            stopped = hit;
        }
        proptest::prop_assert_eq!((out, stopped), one_shot_after(&stops, &text, unchecked));
    }

    #[test]
    fn streaming_equals_one_shot_for_any_chunking(
        text in "[ab<>/é]{0,40}",
        stops in proptest::collection::vec("[ab<>/é]{0,4}", 0..4),
        cuts in proptest::collection::vec(0usize..40, 0..8),
    ) {
        let mut bounds: Vec<usize> = cuts
            .into_iter()
            .map(|c| c.min(text.len()))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        bounds.extend([0, text.len()]);
        bounds.sort_unstable();
        let chunks: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        let refs: Vec<&str> = stops.iter().map(String::as_str).collect();
        let (out, stopped, _) = run(&refs, &chunks);
        proptest::prop_assert_eq!((out, stopped), one_shot(&stops, &text));
    }
}
