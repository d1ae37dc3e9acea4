//! Finding any of a few words in raw text as it is read (an Aho-Corasick automaton): the free
//! text of a structural tag, which runs until one of its triggers or its end tag.

/// Most bytes the words of one automaton hold together (its table is 1 KB a byte).
pub const MAX_WORD_BYTES: usize = 4096;

/// An automaton over bytes whose state after some text says which words end there.
#[derive(Debug, PartialEq, Eq)]
pub struct Words {
    /// Per state, the next state of each byte.
    next: Vec<[u32; 256]>,
    /// Per state, the words (indexes) that end with the bytes read so far.
    ends: Vec<Vec<u16>>,
    count: usize,
}

impl Words {
    /// The automaton of `words`: each non-empty, together at most [`MAX_WORD_BYTES`] bytes.
    pub fn new(words: &[Vec<u8>]) -> Result<Self, String> {
        if words.iter().any(Vec::is_empty) {
            return Err("an empty string cannot be looked for in text".into());
        }
        if words.iter().map(Vec::len).sum::<usize>() > MAX_WORD_BYTES {
            return Err(format!(
                "the strings looked for hold more than {MAX_WORD_BYTES} bytes"
            ));
        }
        // The prefix tree: `goto[s][b]` is the child or 0 (none; the root's children only).
        let mut goto: Vec<[u32; 256]> = vec![[0; 256]];
        let mut ends: Vec<Vec<u16>> = vec![Vec::new()];
        for (i, word) in words.iter().enumerate() {
            let mut s = 0usize;
            for &b in word {
                if goto[s][b as usize] == 0 {
                    goto.push([0; 256]);
                    ends.push(Vec::new());
                    goto[s][b as usize] = (goto.len() - 1) as u32;
                }
                s = goto[s][b as usize] as usize;
            }
            ends[s].push(i as u16);
        }
        // Breadth first: a state's missing bytes go where its longest proper suffix's go, and
        // it also ends the words its suffix ends.
        let mut next = goto.clone();
        let mut fail = vec![0u32; goto.len()];
        let mut queue: std::collections::VecDeque<usize> = (0..256)
            .map(|b| goto[0][b] as usize)
            .filter(|&c| c != 0)
            .collect();
        while let Some(s) = queue.pop_front() {
            let suffix_ends = ends[fail[s] as usize].clone();
            ends[s].extend(suffix_ends);
            for b in 0..256 {
                let child = goto[s][b] as usize;
                if child == 0 {
                    next[s][b] = next[fail[s] as usize][b];
                } else {
                    fail[child] = next[fail[s] as usize][b];
                    queue.push_back(child);
                }
            }
        }
        for e in &mut ends {
            e.sort_unstable();
        }
        Ok(Words {
            next,
            ends,
            count: words.len(),
        })
    }

    /// The state before any byte.
    pub fn start(&self) -> u32 {
        0
    }

    /// The state after byte `b`.
    pub fn step(&self, state: u32, b: u8) -> u32 {
        self.next[state as usize][b as usize]
    }

    /// The words that end with the last byte read into `state`, by index.
    pub fn ends(&self, state: u32) -> &[u16] {
        &self.ends[state as usize]
    }

    /// How many words it looks for.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Words;

    /// (byte offset after which, word index) of every word in `text`, by the automaton.
    fn found(words: &[&str], text: &str) -> Vec<(usize, u16)> {
        let words: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        let w = Words::new(&words).unwrap();
        let mut s = w.start();
        let mut out = Vec::new();
        for (i, &b) in text.as_bytes().iter().enumerate() {
            s = w.step(s, b);
            out.extend(w.ends(s).iter().map(|&k| (i + 1, k)));
        }
        out
    }

    /// The same by brute force.
    fn brute(words: &[&str], text: &str) -> Vec<(usize, u16)> {
        let mut out = Vec::new();
        for end in 1..=text.len() {
            for (k, w) in words.iter().enumerate() {
                if text.as_bytes()[..end].ends_with(w.as_bytes()) {
                    out.push((end, k as u16));
                }
            }
        }
        out
    }

    #[test]
    fn every_occurrence_is_found_overlapping_ones_too() {
        let words = ["<tool_call>", "<f", "ab", "b", "aab"];
        for text in [
            "x<tool_call>y",
            "<<f<tool_cal<tool_call>",
            "aaab",
            "abab<fab",
            "",
        ] {
            assert_eq!(found(&words, text), brute(&words, text), "{text:?}");
        }
    }

    #[test]
    fn random_texts_agree_with_brute_force() {
        let words = ["aba", "ba", "abab", "c", "bca"];
        let mut seed = 7u64;
        for _ in 0..200 {
            let text: String = (0..24)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ['a', 'b', 'c'][(seed >> 33) as usize % 3]
                })
                .collect();
            assert_eq!(found(&words, &text), brute(&words, &text), "{text:?}");
        }
    }

    #[test]
    fn empty_or_too_long_words_are_refused() {
        assert!(Words::new(&[b"a".to_vec(), Vec::new()]).is_err());
        assert!(Words::new(&[vec![b'a'; 5000]]).is_err());
        assert!(Words::new(&[]).is_ok_and(|w| w.is_empty()));
    }
}
