//! AMQP 0-9-1 topic matching, as a RabbitMQ topic exchange does it.
//!
//! Routing keys and binding patterns are words separated by `.`. In a pattern, `*` matches
//! exactly one word and `#` matches zero or more words: `a.#` matches `a` and `a.b.c`, `#`
//! matches every key, `a.#.c` matches `a.c`. Written by hand because it is a few lines of
//! dynamic programming and the in-process transport must match exactly what RabbitMQ does;
//! the RabbitMQ transport validates with the same functions before talking to the broker.
//!
//! Deliberately stricter than AMQP, to catch bugs such as a key built from an empty host
//! name: keys and patterns must be non-empty, at most 255 bytes (AMQP's short string),
//! without empty words (`a..b`, leading or trailing `.`); a wildcard must be a whole word
//! (`a*` is refused, where RabbitMQ would treat it as a literal); keys contain no `*`/`#`.

use std::fmt;

use crate::BusError;

/// Longest routing key or pattern AMQP can carry (a short string).
pub const MAX_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

/// A validated binding pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    words: Vec<Word>,
}

fn check_shape(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > MAX_LEN {
        return Err("it is longer than 255 bytes");
    }
    if s.split('.').any(str::is_empty) {
        return Err("it has an empty word (leading, trailing or doubled '.')");
    }
    Ok(())
}

impl Pattern {
    /// Parses and validates a binding pattern.
    pub fn parse(pattern: &str) -> Result<Pattern, BusError> {
        let bad = |why: &str| BusError::BadPattern {
            pattern: pattern.to_owned(),
            why: why.to_owned(),
        };
        check_shape(pattern).map_err(bad)?;
        let mut words: Vec<Word> = Vec::new();
        for w in pattern.split('.') {
            let word = match w {
                "*" => Word::One,
                "#" => Word::Any,
                _ if w.contains(['*', '#']) => {
                    return Err(bad(&format!(
                        "word {w:?} mixes a wildcard with other characters; '*' and '#' \
                         must be whole words"
                    )))
                }
                _ => Word::Literal(w.to_owned()),
            };
            // `#.#` means the same as `#`; collapsing keeps matching linear in practice.
            if word == Word::Any && words.last() == Some(&Word::Any) {
                continue;
            }
            words.push(word);
        }
        Ok(Pattern {
            source: pattern.to_owned(),
            words,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether a routing key matches this pattern. An invalid key matches nothing.
    pub fn matches(&self, routing_key: &str) -> bool {
        if validate_routing_key(routing_key).is_err() {
            return false;
        }
        let key: Vec<&str> = routing_key.split('.').collect();
        // reach[j]: the pattern words seen so far can match the first j key words.
        let mut reach = vec![false; key.len() + 1];
        reach[0] = true;
        for word in &self.words {
            let mut next = vec![false; key.len() + 1];
            match word {
                Word::Any => {
                    let mut any = false;
                    for (j, slot) in next.iter_mut().enumerate() {
                        any |= reach[j];
                        *slot = any;
                    }
                }
                Word::One => {
                    next[1..].copy_from_slice(&reach[..key.len()]);
                }
                Word::Literal(lit) => {
                    for j in 1..=key.len() {
                        next[j] = reach[j - 1] && key[j - 1] == lit;
                    }
                }
            }
            reach = next;
        }
        reach[key.len()]
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Checks a routing key to publish with: non-empty words, no wildcard characters, at most
/// 255 bytes.
pub fn validate_routing_key(routing_key: &str) -> Result<(), BusError> {
    let bad = |why: &str| BusError::BadRoutingKey {
        key: routing_key.to_owned(),
        why: why.to_owned(),
    };
    check_shape(routing_key).map_err(bad)?;
    if routing_key.contains(['*', '#']) {
        return Err(bad(
            "it contains '*' or '#', which are wildcards of binding patterns, not of keys",
        ));
    }
    Ok(())
}

/// Convenience: parses `pattern` and matches `routing_key` against it.
pub fn matches(pattern: &str, routing_key: &str) -> Result<bool, BusError> {
    Ok(Pattern::parse(pattern)?.matches(routing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        matches(pattern, key).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn literal_pattern_matches_only_the_same_key() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(!m("a.b.c", "a.b.c.d"));
        assert!(!m("a.b.c", "a.b.x"));
        assert!(!m("a.b", "a.bb"));
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert!(!m("a.RUNNING", "a.running"));
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(m("a.*.c", "a.xyz.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("a.*.c", "a.b.b.c"));
        assert!(m("*", "a"));
        assert!(!m("*", "a.b"));
        assert!(m("*.*", "a.b"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b"));
        assert!(m("a.#", "a.b.c"));
        assert!(!m("a.#", "b.a"));
        assert!(m("#.c", "c"));
        assert!(m("#.c", "a.b.c"));
        assert!(!m("#.c", "c.a"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.c"));
        assert!(m("a.#.c", "a.b.b.c"));
        assert!(!m("a.#.c", "a.b"));
    }

    #[test]
    fn lone_hash_matches_every_key() {
        for key in ["a", "a.b", "x.y.z.w", "orchestrator.vm.status.RUNNING.h1"] {
            assert!(m("#", key), "{key}");
        }
    }

    #[test]
    fn wildcards_combine() {
        assert!(m("*.#", "a"));
        assert!(!m("*.*.#", "a"));
        assert!(m("#.*", "a"));
        assert!(m("#.b.#", "b"));
        assert!(m("#.b.#", "a.b.c"));
        assert!(!m("#.b.#", "a.c"));
        assert!(m("a.#.#.c", "a.c"));
        assert!(m("#.#", "a.b"));
        assert!(m("a.*.#.d", "a.b.d"));
        assert!(m("a.*.#.d", "a.b.c.c.d"));
        assert!(!m("a.*.#.d", "a.d"));
    }

    #[test]
    fn many_hashes_stay_fast() {
        let pattern = ["#"; 40].join(".x.");
        let key = ["y"; 200].join(".");
        assert!(!m(&pattern, &key));
        assert!(m(&pattern, &["x"; 39].join(".")));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "a*", "#a", "a.b*.c", "*#"] {
            let err = Pattern::parse(bad).expect_err(bad);
            assert!(matches!(err, BusError::BadPattern { ref pattern, .. } if pattern == bad));
        }
        assert!(Pattern::parse(&"a".repeat(256)).is_err());
        assert!(Pattern::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn bad_pattern_error_says_why() {
        let err = Pattern::parse("orchestrator.h1*").expect_err("mixed");
        let msg = err.to_string();
        assert!(msg.contains("orchestrator.h1*"), "{msg}");
        assert!(msg.contains("whole words"), "{msg}");
    }

    #[test]
    fn invalid_routing_keys_are_refused_and_match_nothing() {
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.#", "a*b"] {
            assert!(
                matches!(
                    validate_routing_key(bad),
                    Err(BusError::BadRoutingKey { .. })
                ),
                "{bad:?}"
            );
            assert!(!m("#", bad), "{bad:?}");
        }
        assert!(validate_routing_key(&"a".repeat(256)).is_err());
        assert!(validate_routing_key("orchestrator.h1.vm.create").is_ok());
    }

    #[test]
    fn pattern_displays_as_written() {
        let p = Pattern::parse("a.#.#.c").expect("valid");
        assert_eq!(p.as_str(), "a.#.#.c");
        assert_eq!(p.to_string(), "a.#.#.c");
    }

    // The keys and bindings of ARCHITECTURE §3.

    const HOST_H1_COMMANDS: &str = "orchestrator.h1.#";
    const WEB: &str = "orchestrator.vm.status.#";
    const TERM_RUNNING_H1: &str = "orchestrator.vm.status.RUNNING.h1";
    const TERM_STOPPED_H1: &str = "orchestrator.vm.status.STOPPED.h1";
    const IMAGE_STATUS: &str = "orchestrator.image.status.#";
    const HEARTBEAT: &str = "orchestrator.host.heartbeat.#";
    const ALL: [&str; 6] = [
        HOST_H1_COMMANDS,
        WEB,
        TERM_RUNNING_H1,
        TERM_STOPPED_H1,
        IMAGE_STATUS,
        HEARTBEAT,
    ];

    fn bound(key: &str) -> Vec<&'static str> {
        ALL.into_iter().filter(|p| m(p, key)).collect()
    }

    #[test]
    fn host_commands_reach_only_that_hosts_queue() {
        assert_eq!(bound("orchestrator.h1.vm.create"), [HOST_H1_COMMANDS]);
        assert_eq!(bound("orchestrator.h1.image.import"), [HOST_H1_COMMANDS]);
        assert_eq!(bound("orchestrator.h2.vm.create"), Vec::<&str>::new());
    }

    #[test]
    fn running_status_reaches_web_and_that_hosts_running_terminator() {
        assert_eq!(
            bound("orchestrator.vm.status.RUNNING.h1"),
            [WEB, TERM_RUNNING_H1]
        );
        assert_eq!(bound("orchestrator.vm.status.RUNNING.h2"), [WEB]);
    }

    #[test]
    fn stopped_status_reaches_web_and_that_hosts_stopped_terminator() {
        assert_eq!(
            bound("orchestrator.vm.status.STOPPED.h1"),
            [WEB, TERM_STOPPED_H1]
        );
    }

    #[test]
    fn other_statuses_reach_only_web() {
        for state in [
            "PENDING", "CREATING", "STARTING", "STOPPING", "FAILED", "LOST",
        ] {
            assert_eq!(
                bound(&format!("orchestrator.vm.status.{state}.h1")),
                [WEB],
                "{state}"
            );
        }
    }

    #[test]
    fn image_statuses_and_heartbeats_reach_the_control_queue() {
        assert_eq!(bound("orchestrator.image.status.h1"), [IMAGE_STATUS]);
        assert_eq!(bound("orchestrator.host.heartbeat.h1"), [HEARTBEAT]);
    }
}
