//! Keeps docs/WALKTHROUGH.md honest.
//!
//! The walk-through quotes `--trace` output from one scripted session (below). This test
//! runs that session and fails if any trace line quoted in the document no longer
//! appears in the real output, or if a link to a line of code no longer lands on the
//! function it names. `make trace-session` prints the session's trace.

mod common;

use std::collections::HashMap;

use common::resumable::Resumable;
use common::*;

const DOC: &str = include_str!("../docs/WALKTHROUGH.md");

/// RFC 6455 section 5.7's masking key, so the masked bytes match the RFC's example.
const RFC_MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// The session the walk-through follows: two clients join, one says "Hello" and pings, the
/// server is stopped and continued, and the other client says goodbye with a close frame.
///
/// Frame lengths depend on how many digits the random nicknames have, and the stand-ins
/// have five, as 90% of real ones do; a session that drew a shorter one is run again.
fn run_session() -> Vec<String> {
    for _ in 0..50 {
        if let Some(trace) = try_session() {
            return trace;
        }
    }
    panic!("fifty sessions in a row drew a nickname shorter than five digits");
}

fn try_session() -> Option<Vec<String>> {
    let server = Server::start(&["--trace"]);
    let five_digits = |join: &str| join.len() == " .... user-00000 has joined.".len();
    let mut alice = RawClient::connect(server.ws);
    let alice_join = alice.text();
    let mut bob = RawClient::connect(server.ws);
    let bob_join = bob.text();
    if !five_digits(&alice_join) || !five_digits(&bob_join) {
        return None;
    }
    alice.text(); // bob's join, as alice sees it
    alice.send_frame(0x81, RFC_MASK, b"Hello");
    alice.text();
    bob.text();
    alice.send_frame(0x89, RFC_MASK, b"still there?");
    alice.next_frame();
    // Ctrl-Z and `fg`: a reader asleep in its read is interrupted, and goes on. Bob's has
    // been asleep since his last line; Alice's may still be on its way back to its read.
    // A reader that is not in its read at the instant of the stop (a busy machine may still
    // be scheduling it) is not interrupted: the stop is made again, at most five times.
    let went_on = || {
        normalise(&server.stderr(), &server)
            .iter()
            .any(|l| l == "user-90211 | read interrupted (the process was stopped); reading on")
    };
    for stop in 1..=5 {
        pause_process(server.pid(), std::time::Duration::from_millis(300));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !went_on() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if went_on() {
            break;
        }
        assert!(
            stop < 5,
            "bob's reader never went on reading after five stops"
        );
    }
    let mut bye = 1000u16.to_be_bytes().to_vec();
    bye.extend_from_slice(b"bye");
    bob.send_frame(0x88, RFC_MASK, &bye);
    assert_eq!(bob.close_code(), (1000, "bye".to_owned()));
    let left = alice.text();
    assert!(left.ends_with("has left."));
    // The writers' reports of the leave line and of the close are the last things the session
    // prints, and stderr is collected by another thread: wait for them before comparing.
    let last = [
        "user-40127 | wrote 28 bytes in 1 system call(s)",
        "user-90211 | all sent; write side shut",
    ];
    eventually("the last trace lines", || {
        let lines = normalise(&server.stderr(), &server);
        last.iter().all(|want| lines.iter().any(|l| l == want))
    });
    Some(normalise(&server.stderr(), &server))
}

/// The walk-through's second session, a connection that drops and comes back: a page
/// (resumable) and a plain client join, the page's connection is reset, the plain client
/// speaks, and the page comes back with its token and its last position.
fn run_resume_session() -> Vec<String> {
    for _ in 0..50 {
        if let Some(trace) = try_resume_session() {
            return trace;
        }
    }
    panic!("fifty sessions in a row drew a nickname shorter than five digits");
}

fn try_resume_session() -> Option<Vec<String>> {
    let server = Server::start(&["--trace"]);
    let mut page = Resumable::new_session(&server);
    let mut plain = RawClient::connect(server.ws);
    let plain_join = plain.text();
    if page.nickname.len() != "user-00000".len()
        || plain_join.len() != " .... user-00000 has joined.".len()
    {
        return None;
    }
    page.line(); // the plain client's join
    let (token, _, position) = page.cut();
    eventually("the page's reader to see the reset", || {
        server.stderr().contains("its session waits for it")
    });
    plain.send_frame(0x81, RFC_MASK, b"you there?");
    plain.text();
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "resumed 1");
    let missed = read_text(&mut ws);
    assert!(missed.ends_with(": you there?"), "{missed:?}");
    eventually("the resumed lines' send", || {
        let lines = normalise(&server.stderr(), &server);
        let resumed = lines.iter().position(|l| l.ends_with("\"resumed 1\""));
        resumed.is_some_and(|at| lines[at..].iter().any(|l| l.contains(" | wrote ")))
    });
    Some(normalise(&server.stderr(), &server))
}

/// The walk-through's third session, two instances sharing one room through Redis: a client
/// joins each, and the first says "Hello". Returns each instance's trace, with stream IDs
/// (which are times) made into fixed stand-ins.
#[cfg(feature = "redis")]
fn run_cluster_session() -> Option<(Vec<String>, Vec<String>)> {
    use common::redis_server::{instance_with, Redis};
    let redis = Redis::start()?;
    let first = instance_with(&redis.url(), &["--trace"]);
    let second = instance_with(&redis.url(), &["--trace"]);
    let mut alice = RawClient::connect(first.ws);
    let alice_join = alice.text();
    // The second instance reads Alice's join before Bob arrives, as the document tells it.
    eventually("the second instance to read the first join", || {
        second
            .stderr()
            .contains("room | broadcast to 0 clients:  .... user-")
    });
    let mut bob = RawClient::connect(second.ws);
    let bob_join = bob.text();
    alice.text(); // bob's join, read back from the stream
    alice.send_frame(0x81, RFC_MASK, b"Hello");
    assert!(alice.text().ends_with(": Hello"));
    assert!(bob.text().ends_with(": Hello"));
    let hello_sent = |server: &Server| {
        let lines = normalise(&server.stderr(), server);
        let broadcast = lines.iter().position(|l| l.ends_with(": Hello"));
        broadcast.is_some_and(|at| lines[at..].iter().any(|l| l.contains(" | wrote ")))
    };
    let hello_added = || {
        let lines = normalise(&first.stderr(), &first);
        lines
            .iter()
            .any(|l| l.starts_with("stream | XADD") && l.ends_with("Hello\""))
    };
    eventually("both instances to send the line", || {
        hello_added() && hello_sent(&first) && hello_sent(&second)
    });
    // Each instance may print Bob's name first: both get the same stand-ins.
    let name = |join: &str| {
        join.trim_start_matches(" .... ")
            .replace(" has joined.", "")
    };
    let (alice_name, bob_name) = (name(&alice_join), name(&bob_join));
    let mut by_name = [(alice_name, "user-40127"), (bob_name, "user-90211")];
    by_name.sort_by_key(|(real, _)| std::cmp::Reverse(real.len()));
    let stand_ins = |text: String| {
        by_name.iter().fold(text, |text, (real, stand_in)| {
            text.replace(real.as_str(), stand_in)
        })
    };
    let (mut a, mut b) = (
        normalise(&stand_ins(first.stderr()), &first),
        normalise(&stand_ins(second.stderr()), &second),
    );
    stream_ids_as_stand_ins(&mut a, &mut b);
    Some((a, b))
}

/// Stream IDs are the milliseconds they were added at: the earliest becomes
/// `1764466000000-0`, the next `1764466000001-0`, and so on, the same in both traces.
#[cfg(feature = "redis")]
fn stream_ids_as_stand_ins(a: &mut [String], b: &mut [String]) {
    let is_id = |w: &str| {
        w.split_once('-').is_some_and(|(ms, seq)| {
            ms.len() == 13
                && ms.chars().all(|c| c.is_ascii_digit())
                && !seq.is_empty()
                && seq.chars().all(|c| c.is_ascii_digit())
        })
    };
    let words = |line: &String| {
        line.split([' ', ':'])
            .filter(|w| is_id(w))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut ids: Vec<(u64, u64, String)> = a
        .iter()
        .chain(b.iter())
        .flat_map(words)
        .map(|w| {
            let (ms, seq) = w.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap(), w.clone())
        })
        .collect();
    ids.sort();
    ids.dedup();
    for line in a.iter_mut().chain(b.iter_mut()) {
        for word in words(line) {
            let n = ids.iter().position(|id| id.2 == word).unwrap();
            *line = line.replace(&word, &format!("{}-0", 1764466000000u64 + n as u64));
        }
    }
}

/// The lines of every block in the document fenced with ```` ```text <tag> ````.
fn quoted_lines(tag: &str) -> Vec<&'static str> {
    let fence = format!("```text {tag}");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in DOC.lines() {
        if line.trim_start().starts_with("```") {
            inside = line.trim() == fence;
            continue;
        }
        if inside && !line.trim().is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// Fails with the quoted lines that are not in `real`.
fn assert_all_real(quoted: &[&str], real: &[String], what: &str) {
    let missing: Vec<&&str> = quoted
        .iter()
        .filter(|q| !real.iter().any(|r| r == **q))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/WALKTHROUGH.md quotes {what} lines the server no longer prints:\n{}\n\nreal output:\n{}",
        missing.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n"),
        real.join("\n")
    );
}

/// Random nicknames, ports and peer addresses become fixed stand-ins, in order of first
/// appearance, so the document can quote the output word for word.
fn normalise(stderr: &str, server: &Server) -> Vec<String> {
    const NAMES: [&str; 2] = ["user-40127", "user-90211"];
    const PEERS: [&str; 3] = ["127.0.0.1:50312", "127.0.0.1:50318", "127.0.0.1:50324"];
    let mut names: HashMap<String, &str> = HashMap::new();
    let mut peers: HashMap<String, &str> = HashMap::new();
    let ws_addr = server.ws.to_string();
    stderr
        .lines()
        .filter(|l| l.contains(" | "))
        .map(|line| {
            let mut out = line.replace(&ws_addr, "127.0.0.1:12345");
            for word in words_like(&out, "user-") {
                if NAMES.contains(&word.as_str()) {
                    continue;
                }
                let n = names.len();
                let stand_in = *names.entry(word.clone()).or_insert(NAMES[n.min(1)]);
                out = out.replace(&word, stand_in);
            }
            for word in words_like(&out, "127.0.0.1:") {
                if word == "127.0.0.1:12345" || PEERS.contains(&word.as_str()) {
                    continue;
                }
                let n = peers.len();
                let stand_in = *peers.entry(word.clone()).or_insert(PEERS[n.min(2)]);
                out = out.replace(&word, stand_in);
            }
            out
        })
        .collect()
}

/// Every `prefix` followed by digits in `line`.
fn words_like(line: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at + prefix.len()..];
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            found.push(format!("{prefix}{}", &tail[..digits]));
        }
        rest = &tail[digits..];
    }
    found
}

#[test]
fn every_trace_line_quoted_in_the_walkthrough_is_real() {
    let mut real = run_session();
    real.extend(run_resume_session());
    let quoted = quoted_lines("trace");
    assert!(
        quoted.len() >= 20,
        "the walk-through quotes too little trace"
    );
    assert_all_real(&quoted, &real, "trace");
}

/// The cluster's blocks: each line was printed by one of the two instances.
#[cfg(feature = "redis")]
#[test]
fn every_cluster_trace_line_quoted_in_the_walkthrough_is_real() {
    let Some((a, b)) = run_cluster_session() else {
        return;
    };
    let quoted = quoted_lines("trace-cluster");
    assert!(quoted.len() >= 4, "the walk-through quotes too little");
    let both: Vec<String> = a.into_iter().chain(b).collect();
    assert_all_real(&quoted, &both, "cluster trace");
}

/// One link to a line of code, like [`read_pump`](../src/connection/client.rs#L149).
struct CodeLink {
    /// The whole link as written.
    text: String,
    name: String,
    file: String,
    line: usize,
}

fn code_links(doc: &str) -> Vec<CodeLink> {
    let mut links = Vec::new();
    for piece in doc.split("[`").skip(1) {
        let Some((name, rest)) = piece.split_once("`](../") else {
            continue;
        };
        let Some((target, _)) = rest.split_once(')') else {
            continue;
        };
        let Some((file, line)) = target.split_once("#L") else {
            continue;
        };
        links.push(CodeLink {
            text: format!("[`{name}`](../{target})"),
            name: name.to_owned(),
            file: file.to_owned(),
            line: line.parse().unwrap_or(0),
        });
    }
    links
}

fn source(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|_| panic!("the walk-through links to a missing file {file}"))
}

/// The line (from 1) that defines `name` in `text`: its `fn`, its `struct`, or else the
/// first line of code that names it.
fn defining_line(text: &str, name: &str) -> Option<usize> {
    let bare = name.trim_end_matches("()").rsplit("::").next()?;
    let lines: Vec<&str> = text.lines().collect();
    let is_code = |line: &str| !line.trim_start().starts_with("//");
    let names = |line: &str, words: &str| {
        line.match_indices(words).any(|(at, _)| {
            let after = line[at + words.len()..].chars().next();
            !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    [
        format!("fn {bare}"),
        format!("struct {bare}"),
        bare.to_owned(),
    ]
    .iter()
    .find_map(|words| {
        lines
            .iter()
            .position(|line| is_code(line) && names(line, words))
    })
    .map(|index| index + 1)
}

#[test]
fn every_link_to_a_line_of_code_lands_on_what_it_names() {
    let links = code_links(DOC);
    assert!(
        links.len() >= 8,
        "the walk-through links to too few lines of code"
    );
    for link in links {
        let text = source(&link.file);
        let at = text.lines().nth(link.line.saturating_sub(1)).unwrap_or("");
        let bare = link
            .name
            .trim_end_matches("()")
            .rsplit("::")
            .next()
            .unwrap();
        assert!(
            at.contains(bare),
            "{}#L{} is `{at}`, not `{}`: run `make walkthrough-links` to re-point the links",
            link.file,
            link.line,
            link.name
        );
    }
}

/// A code block the walk-through quotes: its language, the file its fence names, and its
/// lines. ```` ```rust src/connection/client.rs ```` quotes that file; ```` ```rust illustration ````
/// says the block is not a quote.
struct QuotedBlock {
    fence: String,
    file: Option<String>,
    lines: Vec<String>,
}

/// Every `js` and `rust` block in the document.
fn quoted_code_blocks(doc: &str) -> Vec<QuotedBlock> {
    let mut blocks = Vec::new();
    // Inside a block: `Some(Some(..))` for one to check, `Some(None)` for another language.
    let mut inside: Option<Option<QuotedBlock>> = None;
    for line in doc.lines() {
        let trimmed = line.trim();
        if !trimmed.starts_with("```") {
            if let Some(Some(block)) = &mut inside {
                block.lines.push(trimmed.to_owned());
            }
            continue;
        }
        match inside.take() {
            Some(block) => blocks.extend(block),
            None => {
                let info: Vec<&str> = trimmed.trim_start_matches('`').split_whitespace().collect();
                let checked = matches!(info.first(), Some(&"js" | &"rust"));
                inside = Some(checked.then(|| QuotedBlock {
                    fence: trimmed.to_owned(),
                    file: info.get(1).map(|f| f.to_string()),
                    lines: Vec::new(),
                }));
            }
        }
    }
    blocks
}

/// Where `run` (consecutive lines) starts in `lines` at or after `from`.
fn find_run(lines: &[&str], run: &[&str], from: usize) -> Option<usize> {
    (from..=lines.len().saturating_sub(run.len())).find(|&at| {
        run.iter()
            .enumerate()
            .all(|(i, want)| lines[at + i] == *want)
    })
}

#[test]
fn every_code_block_quoted_in_the_walkthrough_is_in_the_file_it_names() {
    let blocks = quoted_code_blocks(DOC);
    assert!(blocks.len() >= 2, "the walk-through quotes too little code");
    for block in blocks {
        let file = match block.file.as_deref() {
            Some("illustration") => continue,
            Some(file) => file,
            None => panic!(
                "{}: name the file it quotes after the language (or say `illustration`)",
                block.fence
            ),
        };
        let text = source(file);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        // `...` stands for lines left out; each run between them is quoted whole.
        let quoted: Vec<&str> = block.lines.iter().map(String::as_str).collect();
        let mut from = 0;
        for run in quoted.split(|l| *l == "...").filter(|r| !r.is_empty()) {
            match find_run(&lines, run, from) {
                Some(at) => from = at + run.len(),
                None => panic!(
                    "docs/WALKTHROUGH.md quotes {file}, which no longer has these lines (in this order):\n{}",
                    run.join("\n")
                ),
            }
        }
    }
}

/// `make walkthrough-links` runs this after code moves: every link to a line of code is
/// pointed again at the line that defines what it names.
#[test]
#[ignore]
fn repoint_code_links() {
    let path = format!("{}/docs/WALKTHROUGH.md", env!("CARGO_MANIFEST_DIR"));
    let mut doc = std::fs::read_to_string(&path).unwrap();
    for link in code_links(&doc.clone()) {
        let line = defining_line(&source(&link.file), &link.name)
            .unwrap_or_else(|| panic!("{} no longer names `{}`", link.file, link.name));
        let fixed = format!("[`{}`](../{}#L{line})", link.name, link.file);
        doc = doc.replace(&link.text, &fixed);
    }
    std::fs::write(&path, doc).unwrap();
}

/// `make trace-session` runs this to print the session for the document.
#[test]
#[ignore]
fn print_trace_session() {
    println!("{}", run_session().join("\n"));
    println!("\n{}", run_resume_session().join("\n"));
    #[cfg(feature = "redis")]
    if let Some((a, b)) = run_cluster_session() {
        println!("\nfirst instance:\n{}", a.join("\n"));
        println!("\nsecond instance:\n{}", b.join("\n"));
    }
}

/// Lines of a source file before its unit tests, as README's reading order counts them.
fn lines_before_tests(text: &str) -> usize {
    let mut lines = 0;
    let mut previous = "";
    for line in text.lines() {
        if previous == "#[cfg(test)]" && line.starts_with("mod tests") {
            return lines - 1;
        }
        lines += 1;
        previous = line;
    }
    lines
}

#[test]
fn the_reading_order_gives_each_file_its_real_size() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let order = &readme[readme.find("### Reading order").expect("a reading order")..];
    let mut total = 0;
    for row in order.lines().take_while(|l| !l.starts_with("In all")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(file), Some(Ok(said))) = (
            cells
                .get(1)
                .and_then(|c| c.strip_prefix('`')?.strip_suffix('`')),
            cells.get(2).map(|c| c.parse::<usize>()),
        ) else {
            continue;
        };
        let real = lines_before_tests(&source(&format!("src/{file}")));
        assert_eq!(
            said, real,
            "README gives src/{file} {said} lines; it has {real}"
        );
        total += real;
    }
    let in_all = format!("In all, {},{:03} lines", total / 1000, total % 1000);
    assert!(order.contains(&in_all), "README should say: {in_all}");
}
