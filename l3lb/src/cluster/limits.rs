//! Bounds on what l3lb keeps of its input, so that a hostile or broken object costs a bounded
//! amount of memory and log and never takes the other Services down with it.
//!
//! The API server already enforces most of these (an object is at most ~1.5 MiB, a slice at most
//! 1000 endpoints of at most 100 addresses, annotations at most 256 KiB together); l3lb enforces
//! them again because `--source file:DIR`, or an API server that validates less, does not.

/// IPs one Service may ask for (annotations, `spec.loadBalancerIP`, status and `externalIPs`
/// together, in that order): the rest are ignored and reported once. Real Services ask for one
/// or two (dual-stack); a few dozen `externalIPs` is already unusual.
pub const MAX_IPS_PER_SERVICE: usize = 64;

/// Characters of one comma-separated item kept for reporting. The longest IP text is 45
/// characters (IPv6 with an embedded IPv4), so anything longer is malformed anyway, and a
/// megabyte-long item must not become a megabyte-long log line.
pub const MAX_IP_TEXT: usize = 64;

/// Endpoints of one EndpointSlice kept for this node (the API's limit on a whole slice).
pub const MAX_LOCAL_ENDPOINTS_PER_SLICE: usize = 1000;

/// Addresses of one endpoint kept (the API's limit).
pub const MAX_ADDRESSES_PER_ENDPOINT: usize = 100;

/// Largest manifest file read from `file:DIR`. A Service or EndpointSlice is far smaller (the
/// API server allows 256 KiB of annotations and 1000 endpoints), a file may hold a thousand of
/// them, and a directory any number of files. It also bounds the parser's own memory: serde_yaml
/// holds a whole document's events before building anything, over 100 bytes per event, and a
/// dense file has an event every two bytes.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// YAML nodes (scalars, sequences, mappings) one manifest file may expand to, counting every
/// alias each time it is used. An ordinary manifest has about one node per 20 bytes, so a full
/// 1 MiB file of real objects stays near 50 000; a YAML alias bomb stops here instead of growing
/// without end (serde_yaml's own repetition limit allows 100 expansions per event, which a
/// few hundred kilobytes of aliases turn into billions of nodes).
pub const MAX_YAML_NODES: usize = 200_000;

/// Flow collections (`[…]`, `{…}`) nested deeper than this are refused before parsing: the YAML
/// parser's time grows with depth times size (40 000 nested `[` take seconds, a megabyte of them
/// hours), and serde_yaml refuses anything nested deeper than 128 anyway, after the fact.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Bytes of scalar text one manifest file may expand to, aliases counted each time: twice the
/// largest file, which no file without aliases can exceed.
pub const MAX_YAML_SCALAR_BYTES: usize = 2 * MAX_MANIFEST_BYTES as usize;

/// Up to `limit` non-empty items of a comma-separated list, each cut to [`MAX_IP_TEXT`], and
/// whether there were more. Lazy: a megabyte-long value costs one scan, not a megabyte of
/// strings.
pub fn split_list(value: &str, limit: usize) -> (Vec<String>, bool) {
    let mut items = value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty());
    let mut kept: Vec<String> = items.by_ref().take(limit).map(clip).collect();
    // Kept resident for every Service: no spare room.
    kept.shrink_to_fit();
    (kept, items.next().is_some())
}

/// `text` cut to [`MAX_IP_TEXT`] characters; a cut one ends in `…`, so it can never parse as
/// the IP its prefix might spell.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_IP_TEXT) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// Up to `limit` items of `items`, each cut to [`MAX_IP_TEXT`], and whether there were more.
pub fn bounded(
    items: impl IntoIterator<Item = impl AsRef<str>>,
    limit: usize,
) -> (Vec<String>, bool) {
    let mut items = items.into_iter();
    let kept = items
        .by_ref()
        .take(limit)
        .map(|item| clip(item.as_ref()))
        .collect();
    (kept, items.next().is_some())
}

/// An estimate of how deep `text` nests flow collections, from a quick scan that knows where
/// YAML's quoted scalars and comments can start, by libyaml's rules: inside a flow collection
/// where a token starts (after `[`, `{`, `,`, an indicator `: `, a JSON-like key's `:`, an
/// anchor or a tag), outside one at a line start or after an indicator and a blank. Brackets
/// in plain and block scalars count too, so it overestimates, never for real manifests by
/// anything near [`MAX_FLOW_DEPTH`]. Where it cannot tell whether a line ends inside a quoted
/// scalar, it counts the openers that follow and ignores the closers until the quote closes.
/// It is not a YAML parser: should a file crafted against it still keep the parser busy, the
/// file source's watchdog names the parse once it runs for 10 s.
pub fn flow_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    // Outside flow collections: the last byte that is not a blank, a line start being `\n`.
    let mut last = b'\n';
    // Inside them: whether a token starts here, and whether the token before was JSON-like (a
    // quoted scalar or a collection's end, after which `:` needs no blank).
    let (mut token_start, mut json_like) = (false, false);
    // A quoted scalar still open at the end of its line, and its quote.
    let mut open_quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if let Some(quote) = open_quote {
            match byte {
                b'\\' if quote == b'"' => i += 1,
                b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                _ if byte == quote => {
                    open_quote = None;
                    (last, token_start, json_like) = (byte, false, true);
                }
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        let after_blank = i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\n' | b'\r');
        let blank_next = bytes
            .get(i + 1)
            .is_none_or(|next| matches!(next, b' ' | b'\t' | b'\n' | b'\r'));
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                (token_start, json_like) = (true, false);
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                (token_start, json_like) = (false, true);
            }
            b',' => (token_start, json_like) = (true, false),
            b'#' if after_blank => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' => {
                let starts = if depth == 0 {
                    last == b'\n' || (after_blank && matches!(last, b':' | b'-' | b'?'))
                } else {
                    token_start
                };
                if starts {
                    match quoted_on_line(bytes, i) {
                        Ok(end) => {
                            (last, token_start, json_like) = (byte, false, true);
                            i = end;
                        }
                        Err(end) => {
                            open_quote = Some(byte);
                            i = end;
                        }
                    }
                    continue;
                }
                (token_start, json_like) = (false, false);
            }
            b':' if blank_next || json_like => (token_start, json_like) = (true, false),
            b'?' | b'-' if token_start && blank_next => {}
            // An anchor or tag: the node it belongs to starts after it.
            b'&' | b'!' if token_start => {
                while i + 1 < bytes.len()
                    && !matches!(
                        bytes[i + 1],
                        b' ' | b'\t' | b'\n' | b'\r' | b',' | b'[' | b']' | b'{' | b'}'
                    )
                {
                    i += 1;
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => (token_start, json_like) = (false, false),
        }
        if byte == b'\n' {
            if depth == 0 {
                last = b'\n';
            }
        } else if !byte.is_ascii_whitespace() {
            last = byte;
        }
        i += 1;
    }
    deepest
}

/// Where the quoted scalar opening at `start` ends on its line: just after its closing quote,
/// or (`Err`) at the end of the line, still open. YAML's escapes count: `''` in single quotes, a
/// backslash in double quotes.
fn quoted_on_line(bytes: &[u8], start: usize) -> Result<usize, usize> {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => return Err(i),
            b'\\' if quote == b'"' && bytes.get(i + 1).is_some_and(|&next| next != b'\n') => i += 2,
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            byte if byte == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_depth_counts_structure_not_text() {
        assert_eq!(flow_depth("a: [b, {c: [d]}]\n"), 3);
        assert_eq!(flow_depth(&"[".repeat(100_000)), 100_000);
        assert_eq!(
            flow_depth("{\"kind\": \"Service\", \"spec\": {\"ports\": [{\"port\": 80}]}}"),
            4
        );
        // Brackets in quotes and comments are text.
        assert_eq!(flow_depth("a: '[[[[ it''s ]' # [[[[\nb: \"[[\\\"[[\"\n"), 0);
        // Closers hidden in quotes do not pay for openers outside them.
        let sneaky = "[\"]\", ".repeat(100);
        assert_eq!(flow_depth(&sneaky), 100);
        // A quote in the middle of a plain scalar is text, so what follows still counts.
        assert_eq!(flow_depth("a: it's [[[\n"), 3);
        assert_eq!(flow_depth("a:'x: [[[\n"), 3);
    }

    /// Shapes that would fool a scan that takes every quote for a quoted scalar, or trusts
    /// every closer: the depth the parser would see still shows.
    #[test]
    fn flow_depth_is_not_fooled() {
        let deep = "[".repeat(1000);
        // A quote continuing a multi-line plain scalar inside a flow collection is text.
        assert!(flow_depth(&format!("x: [a\n'b, {deep}")) > 1000);
        assert!(flow_depth(&format!("x: [a - 'b, {deep}")) > 1000);
        // A lone quote in a block scalar does not hide the lines after it.
        assert!(flow_depth(&format!("a: |\n  '\nb: {deep}\nc: '\n")) >= 1000);
        // Closers inside JSON strings, after `:` with no blank, do not pay for openers.
        let json = "{\"a\":\"]]]]]\",\"b\":".repeat(100);
        assert_eq!(flow_depth(&json), 100);
        // Nor closers in a quoted scalar behind an anchor or a tag.
        assert_eq!(flow_depth(&"[&a 'x]', ".repeat(100)), 100);
        assert_eq!(flow_depth(&"[!t \"x]\", ".repeat(100)), 100);
        // An `&` or a quote in the middle of a plain scalar is text.
        assert!(flow_depth(&format!("x: [a &b 'c, {deep}")) > 1000);
        // Nor closers on the continuation lines of a quoted scalar.
        let multiline = "[ \"\n]]]\n\" ".repeat(100);
        assert_eq!(flow_depth(&multiline), 100);
        // Real manifests stay shallow: a long double-quoted annotation folded over lines, a
        // JSON Service, a description with brackets.
        let folded = "metadata:\n  annotations:\n    note: \"see [1] and\\\n      [2]] too\"\n";
        assert!(flow_depth(folded) <= 2);
        assert!(flow_depth("description: it's a [test] of [nested [brackets]]\n") <= 2);
    }

    #[test]
    fn a_list_keeps_its_first_items_and_says_it_was_cut() {
        assert_eq!(
            split_list(" 10.0.0.1, ,10.0.0.2 ,", 2),
            (vec!["10.0.0.1".to_owned(), "10.0.0.2".to_owned()], false),
            "empty items are no items"
        );
        let many = (0..10_000).map(|i| format!("10.0.{}.{}", i / 256, i % 256));
        let many = many.collect::<Vec<_>>().join(",");
        let (kept, more) = split_list(&many, MAX_IPS_PER_SERVICE);
        assert_eq!(kept.len(), MAX_IPS_PER_SERVICE);
        assert_eq!(kept[0], "10.0.0.0");
        assert!(more);
        let (kept, more) = split_list(&many, 10_000);
        assert_eq!((kept.len(), more), (10_000, false));
    }

    #[test]
    fn a_long_item_is_cut_so_it_never_parses() {
        let megabyte = "1".repeat(1 << 20);
        let (kept, more) = split_list(&megabyte, MAX_IPS_PER_SERVICE);
        assert!(!more);
        assert_eq!(kept[0].chars().count(), MAX_IP_TEXT + 1);
        assert!(kept[0].ends_with('…'));
        // A cut that leaves a valid-looking prefix must still not parse.
        let sneaky = format!("10.0.100.7{}", " ".repeat(100) + "x");
        let clipped = clip(&sneaky);
        assert!(clipped.parse::<std::net::IpAddr>().is_err(), "{clipped:?}");
        // Multi-byte characters are cut on a boundary.
        assert_eq!(clip(&"é".repeat(100)).chars().count(), MAX_IP_TEXT + 1);
        assert_eq!(clip("2001:db8:100::7"), "2001:db8:100::7");
    }

    #[test]
    fn bounded_keeps_the_first_items() {
        let (kept, more) = bounded(["a", "b", "c"], 2);
        assert_eq!((kept, more), (vec!["a".to_owned(), "b".to_owned()], true));
        let (kept, more) = bounded(Vec::<String>::new(), 2);
        assert!(kept.is_empty() && !more);
    }

    mod differential {
        use proptest::prelude::*;

        use super::super::flow_depth;

        /// Scalars that are hard to tell from structure: brackets in quotes, quotes in plain
        /// scalars, anchors and tags, quoted scalars over several lines.
        fn scalar() -> impl Strategy<Value = String> {
            let bare = prop::sample::select(vec![
                "a",
                "it's",
                "a 'b",
                "a &b",
                "x#y",
                "'x]]}'",
                "'it''s ]'",
                "'['",
                r#""]]\"]""#,
                r#""[{""#,
                "'x\n]]]\n'",
                "\"a\\\n ]]\"",
            ]);
            let property = prop::sample::select(vec!["", "", "&a ", "!t ", "&b !t "]);
            (property, bare).prop_map(|(property, bare)| format!("{property}{bare}"))
        }

        fn separator() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![", ", ",\n", ", # c ]]\n  ", " ,"])
        }

        /// A chain of `depth` nested flow collections, each with scalars around the next one,
        /// as sequences, YAML mappings or JSON-like mappings.
        fn nested() -> impl Strategy<Value = (usize, String)> {
            (1usize..160)
                .prop_flat_map(|depth| {
                    let level = (
                        prop::sample::select(vec![0u8, 1, 2]),
                        scalar(),
                        separator(),
                        scalar(),
                    );
                    (Just(depth), prop::collection::vec(level, depth))
                })
                .prop_map(|(depth, levels)| {
                    let mut text = "a".to_owned();
                    for (kind, before, separator, after) in levels {
                        text = match kind {
                            0 => format!("[{before}{separator}{text}{separator}{after}]"),
                            1 => format!("{{k: {before}{separator}n: {text}}}"),
                            _ => format!("{{\"k\":{text}{separator}\"m\": {after}}}"),
                        };
                    }
                    (depth, format!("x: {text}\n"))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// The estimate never falls below the depth the parser sees, for valid YAML.
            #[test]
            fn flow_depth_is_an_upper_bound((depth, text) in nested()) {
                if depth < 100 {
                    // The generator writes valid YAML, so `depth` is what libyaml sees.
                    let parsed = serde_yaml::from_str::<serde_yaml::Value>(&text);
                    prop_assert!(parsed.is_ok(), "{:?}\n{text}", parsed.err());
                }
                let estimate = flow_depth(&text);
                prop_assert!(estimate >= depth, "estimate {estimate} < depth {depth}:\n{text}");
            }
        }
    }
}
