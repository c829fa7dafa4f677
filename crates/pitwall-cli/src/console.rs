//! Following a serial console that the API only shows as a tail.
//!
//! `GET /v1/vms/{name}/console` returns the last `max_bytes` of the VM's captured console,
//! not an offset into it, so `--follow` has to work out which bytes of each new tail it has
//! not printed yet. [`Follower`] remembers the end of what it printed and, for each new tail,
//! finds the longest suffix of the printed bytes that is a prefix of the tail: that part was
//! printed already, the rest is new.
//!
//! While the console is shorter than the tail size, the tail is the whole console and starts
//! with everything printed so far; the overlap is then all that was printed and the new bytes
//! are exactly those past the printed length. Once the console outgrows the tail size, the
//! tail starts somewhere inside what was printed and the overlap locates it. Two limits are
//! inherent to a tail-only API, and are accepted:
//! - output that repeats with a period shorter than the overlap (e.g. the same line over and
//!   over) can match further than it should, so a few repeated bytes may not be printed;
//! - if more than a whole tail is written between two polls, nothing overlaps, the tail is
//!   printed whole and what came before it is lost.
//!
//! The overlap is found with the Knuth–Morris–Pratt prefix function, linear in the tail size,
//! where trying every suffix would be quadratic in it (tails can be megabytes).

/// Remembers what was printed and yields the new bytes of each tail.
#[derive(Debug, Default)]
pub struct Follower {
    /// The last bytes printed, at most `window` of them.
    printed: Vec<u8>,
    /// The longest tail seen: the most of `printed` an overlap can reach.
    window: usize,
    /// Bytes printed in all.
    total: u64,
}

impl Follower {
    pub fn new() -> Self {
        Self::default()
    }

    /// The part of `tail` not printed yet; call it with each tail, in order, and print what it
    /// returns.
    pub fn new_bytes<'a>(&mut self, tail: &'a [u8]) -> &'a [u8] {
        let fresh = &tail[overlap(&self.printed, tail)..];
        self.printed.extend_from_slice(fresh);
        self.window = self.window.max(tail.len());
        if self.printed.len() > self.window {
            self.printed.drain(..self.printed.len() - self.window);
        }
        self.total += fresh.len() as u64;
        fresh
    }

    /// Bytes printed so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The length of the longest suffix of `printed` that is a prefix of `tail`.
pub fn overlap(printed: &[u8], tail: &[u8]) -> usize {
    if tail.is_empty() || printed.is_empty() {
        return 0;
    }
    // only the last tail.len() bytes of `printed` can take part in the overlap
    let text = &printed[printed.len().saturating_sub(tail.len())..];
    let pi = prefix_function(tail);
    // run KMP with `tail` as the pattern over `text`: the match length after the last byte is
    // the longest prefix of `tail` ending there
    let mut q = 0;
    for &b in text {
        while q > 0 && (q == tail.len() || tail[q] != b) {
            q = pi[q - 1];
        }
        if tail[q] == b {
            q += 1;
        }
    }
    q
}

/// `pi[i]`: the length of the longest proper prefix of `s[..=i]` that is also its suffix.
fn prefix_function(s: &[u8]) -> Vec<usize> {
    let mut pi = vec![0; s.len()];
    for i in 1..s.len() {
        let mut k = pi[i - 1];
        while k > 0 && s[i] != s[k] {
            k = pi[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        pi[i] = k;
    }
    pi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulate a console that only shows its last `window` bytes.
    fn tail(console: &[u8], window: usize) -> &[u8] {
        &console[console.len().saturating_sub(window)..]
    }

    #[test]
    fn overlap_is_the_longest_printed_suffix_that_starts_the_tail() {
        assert_eq!(overlap(b"hello wor", b"world"), 3);
        assert_eq!(overlap(b"abc", b"abcdef"), 3);
        assert_eq!(overlap(b"xyz", b"abc"), 0);
        assert_eq!(overlap(b"", b"abc"), 0);
        assert_eq!(overlap(b"abc", b""), 0);
        assert_eq!(
            overlap(b"abcabc", b"abcabc"),
            6,
            "an unchanged tail overlaps whole"
        );
        assert_eq!(overlap(b"aab", b"abx"), 2);
    }

    #[test]
    fn overlap_agrees_with_trying_every_suffix() {
        let naive = |p: &[u8], t: &[u8]| {
            (0..=p.len().min(t.len()))
                .rev()
                .find(|&k| p.ends_with(&t[..k]))
                .unwrap_or(0)
        };
        let alphabet = b"ab\n";
        // every pair of strings over a small alphabet up to length 5
        let all: Vec<Vec<u8>> = (0..=5u32)
            .flat_map(|len| {
                (0..3usize.pow(len)).map(move |mut n| {
                    (0..len)
                        .map(|_| {
                            let c = alphabet[n % 3];
                            n /= 3;
                            c
                        })
                        .collect()
                })
            })
            .collect();
        for p in &all {
            for t in &all {
                assert_eq!(overlap(p, t), naive(p, t), "printed {p:?} tail {t:?}");
            }
        }
    }

    #[test]
    fn the_first_tail_is_printed_whole() {
        let mut f = Follower::new();
        assert_eq!(f.new_bytes(b"booting\n"), b"booting\n");
    }

    #[test]
    fn an_unchanged_console_prints_nothing() {
        let mut f = Follower::new();
        f.new_bytes(b"booting\n");
        assert_eq!(f.new_bytes(b"booting\n"), b"");
        assert_eq!(f.total(), 8);
    }

    #[test]
    fn a_growing_console_shorter_than_the_tail_prints_what_was_appended() {
        let mut f = Follower::new();
        f.new_bytes(b"a\n");
        assert_eq!(
            f.new_bytes(b"a\na\n"),
            b"a\n",
            "repeats are new while the tail is whole"
        );
        assert_eq!(f.new_bytes(b"a\na\nb\n"), b"b\n");
    }

    #[test]
    fn a_console_longer_than_the_tail_prints_each_byte_once() {
        let window = 16;
        let lines: Vec<String> = (0..40).map(|i| format!("line {i}\n")).collect();
        let mut console = Vec::new();
        let mut printed = Vec::new();
        let mut f = Follower::new();
        for line in &lines {
            console.extend_from_slice(line.as_bytes());
            printed.extend_from_slice(f.new_bytes(tail(&console, window)));
            // a poll that sees nothing new
            printed.extend_from_slice(f.new_bytes(tail(&console, window)));
        }
        assert_eq!(String::from_utf8(printed).unwrap(), lines.concat());
    }

    #[test]
    fn more_output_than_a_tail_between_polls_prints_the_tail_whole() {
        let mut f = Follower::new();
        f.new_bytes(b"start\n");
        assert_eq!(f.new_bytes(b"0123456789"), b"0123456789");
    }

    #[test]
    fn a_console_that_starts_over_is_printed_from_its_start() {
        let mut f = Follower::new();
        f.new_bytes(b"first boot\nlogin: ");
        assert_eq!(f.new_bytes(b"second boot\n"), b"second boot\n");
    }
}
