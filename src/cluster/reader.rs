//! The stream reader thread: reads the room back from Redis in its one order and hands every
//! entry to the room.

use super::*;

/// The stream thread: reads the stream from `from` on, in order, for ever, and hands each
/// batch to the room. Before each read it checks that the last entry it read is still
/// there: if trimming or a restart took it, entries after it may be gone too, and the room
/// says so.
pub(super) fn read_stream(
    link: &mut Link,
    mut from: String,
    news: Sender<News>,
    identity_of: SharedIdentity,
    trace: Trace,
) {
    // The entry whose loss was last reported: a quiet room must not hear it once a second.
    let mut reported = String::new();
    loop {
        let probe = from != "0-0" && from != reported;
        let reply = link.call(READ_BLOCK + CALL_TIMEOUT, |c| {
            let mut pipe = redis::pipe();
            if probe {
                pipe.cmd("XRANGE")
                    .arg(STREAM)
                    .arg(&from)
                    .arg(&from)
                    .arg("COUNT")
                    .arg(1);
            }
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&from);
            pipe.query::<Vec<Value>>(c)
        });
        let Some(replies) = reply else {
            continue; // the link waits out its backoff
        };
        let mut replies = replies.iter();
        if probe && replies.next().is_some_and(|r| entries_of(r).is_empty()) {
            if trace.is_on() {
                trace.decision("stream", &format!("{from} is gone: lines were missed"));
            }
            reported = from.clone();
            if news.send(News::Gap).is_err() {
                return;
            }
        }
        let read = match replies.next() {
            Some(Value::Array(streams)) => streams.first().map(entries_of).unwrap_or_default(),
            _ => continue, // nothing new within READ_BLOCK
        };
        let Some(Raw { id: last, .. }) = read.last() else {
            continue;
        };
        if trace.is_on() {
            let what = format!(
                "XREAD {STREAM} after {from}: {} entries, up to {last}",
                read.len()
            );
            trace.decision("stream", &what);
        }
        from = last.clone();
        let ours = identity(&identity_of).instance.clone();
        if news.send(News::Stream(placed(read, &ours))).is_err() {
            return; // the room has stopped
        }
    }
}

/// Entries as the room takes them: joins and resumes concern it only when they name one of
/// this instance's (`ours`) clients.
pub(super) fn placed(read: Vec<Raw>, ours: &str) -> Vec<Streamed> {
    let ours =
        |holder: Option<Holder>| holder.and_then(|(instance, id)| (instance == ours).then_some(id));
    read.into_iter()
        .map(|raw| match raw.resumed {
            Some((nickname, by, from, floor)) => Streamed::Resumed(Resumed {
                nickname,
                by: ours(by),
                from: ours(from),
                floor: floor.and_then(|id| id.parse().ok()),
            }),
            None => Streamed::Line(Entry {
                line: raw.line,
                joined: ours(raw.joined),
                position: raw.id.parse().ok(),
            }),
        })
        .collect()
}

/// Which instance's which client holds a name: `instance:client`, read.
pub(super) type Holder = (String, ClientId);

/// A resumed session as the stream carries it: its nickname, the client that takes it, the
/// one that had it, and its floor (a stream ID).
pub(super) type RawResume = (String, Option<Holder>, Option<Holder>, Option<String>);

/// One entry as the stream carries it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Raw {
    pub(super) id: String,
    pub(super) line: String,
    /// For a join: the instance and the client it announces.
    pub(super) joined: Option<Holder>,
    pub(super) resumed: Option<RawResume>,
}

/// The entries in an XREAD stream reply `[name, [[id, [field, value, ...]], ...]]`, or in an
/// XRANGE reply `[[id, [field, value, ...]], ...]`.
pub(super) fn entries_of(reply: &Value) -> Vec<Raw> {
    let list = match reply {
        Value::Array(parts) if parts.len() == 2 && matches!(parts[1], Value::Array(_)) => {
            match (&parts[0], &parts[1]) {
                (Value::BulkString(_), Value::Array(list)) => list.as_slice(),
                _ => parts.as_slice(),
            }
        }
        Value::Array(list) => list.as_slice(),
        _ => &[],
    };
    list.iter().filter_map(entry_of).collect()
}

/// `instance:client`, as a name's holder is written.
pub(super) fn holder_of(text: &str) -> Option<Holder> {
    let (instance, client) = text.rsplit_once(':')?;
    Some((instance.to_owned(), client.parse().ok()?))
}

pub(super) fn entry_of(value: &Value) -> Option<Raw> {
    let Value::Array(parts) = value else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let mut raw = Raw {
        id: text(id)?,
        ..Raw::default()
    };
    let (mut by, mut from, mut nickname, mut floor) = (None, None, None, None);
    for pair in fields.chunks(2) {
        let Some(value) = pair.get(1).and_then(text) else {
            continue;
        };
        match pair.first().and_then(text).as_deref() {
            Some("line") => raw.line = value,
            Some("joined") => raw.joined = holder_of(&value),
            Some("resumed") => by = Some(holder_of(&value)),
            Some("from") => from = Some(holder_of(&value)),
            Some("nickname") => nickname = Some(value),
            Some("floor") => floor = Some(value),
            _ => {}
        }
    }
    if let (Some(nickname), Some(by), Some(from)) = (nickname, by, from) {
        raw.resumed = Some((nickname, by, from, floor));
    }
    Some(raw)
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_entries_from_an_xread_reply() {
        let entry = |id: &str, fields: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(fields.iter().map(|f| bulk(f)).collect()),
            ])
        };
        let reply = Value::Array(vec![
            bulk(STREAM),
            Value::Array(vec![
                entry("1-0", &["line", "user-1: hi"]),
                entry(
                    "2-0",
                    &["line", " .... user-2 has joined.", "joined", "abc:7"],
                ),
                entry(
                    "3-0",
                    &[
                        "resumed", "def:9", "from", "abc:8", "nickname", "user-3", "floor", "2-0",
                    ],
                ),
            ]),
        ]);
        let entries = entries_of(&reply);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].line, "user-1: hi");
        assert_eq!(entries[0].joined, None);
        assert_eq!(entries[1].id, "2-0");
        assert_eq!(entries[1].joined, Some(("abc".to_owned(), 7)));
        let holder = |i: &str, c| Some((i.to_owned(), c));
        assert_eq!(
            entries[2].resumed,
            Some((
                "user-3".to_owned(),
                holder("def", 9),
                holder("abc", 8),
                Some("2-0".to_owned())
            ))
        );
        assert_eq!(entries[2].line, "", "a resume is no line");
    }
}
