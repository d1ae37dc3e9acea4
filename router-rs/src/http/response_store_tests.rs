//! Tests of response_store.rs.

use super::events::MAX_LOG_BYTES;
use super::*;

#[test]
fn the_oldest_responses_go_first_past_the_capacity() {
    let store = ResponseStore::new(2);
    for id in ["a", "b", "c"] {
        let items = vec![json!({"role": "user", "content": id})];
        store.insert(id.into(), Input { items, own: 1 }, json!({}));
    }
    assert!(store.get("a").is_none());
    assert_eq!(store.get("c").unwrap().input[0]["content"], "c");
    assert!(store.remove("b") && !store.remove("b"));
    assert!(store.get("b").is_none() && store.get("c").is_some());
    let none = ResponseStore::new(0);
    none.insert("x".into(), Input::default(), json!({}));
    assert!(none.get("x").is_none());
}

fn total(store: &ResponseStore) -> usize {
    store.inner.lock().unwrap().bytes
}

#[test]
fn an_event_log_counts_as_it_stands_and_at_its_size_once_ended() {
    let store = ResponseStore::new(100);
    let log = Arc::new(EventLog::default());
    let input = || Input::default();
    let (id, base) = ("a".to_owned(), json_len(&json!({"output": []})));
    store.insert_with_events(
        id.clone(),
        input(),
        json!({"output": []}),
        Some(log.clone()),
    );
    assert_eq!(total(&store), base);
    // as the task ends: stored, then its last events (the whole text again), then ended
    store.start_background(&id);
    log.extend(vec![json!({"pad": "x".repeat(1000)})]);
    store.end_background(&id, input(), json!({"output": []}), Some(log.clone()));
    log.extend(vec![json!({"pad": "y".repeat(5000)})]);
    store.end_log(&id, &log);
    assert!(log.bytes() > 6000);
    assert_eq!(total(&store), base + log.bytes());
    // logs that end large push the oldest out
    let count = MAX_BYTES / MAX_LOG_BYTES;
    for n in 0..count {
        let (id, log) = (format!("r{n}"), Arc::new(EventLog::default()));
        let events = Some(log.clone());
        store.insert_with_events(id.clone(), input(), json!({"output": []}), events);
        log.extend(vec![json!({"pad": "z".repeat(MAX_LOG_BYTES - 64)})]);
        store.end_log(&id, &log);
    }
    let last = format!("r{}", count - 1);
    assert!(store.get("a").is_none() && store.get(&last).is_some());
    assert!(total(&store) <= MAX_BYTES);
}

#[test]
fn deleting_a_running_response_the_store_dropped_still_deletes_it() {
    let store = ResponseStore::new(1);
    store.insert("a".into(), Input::default(), json!({}));
    store.start_background("a");
    store.insert("b".into(), Input::default(), json!({}));
    assert!(store.get("a").is_none());
    assert!(store.remove("a"));
    assert!(store.background("a").is_none() && !store.remove("a"));
}

#[test]
fn the_retrieve_query_names_what_is_wrong() {
    let query = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let pairs = pairs.iter();
        pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let read = Retrieve::parse(&query(&[("stream", "true"), ("starting_after", "7")]));
    let want = Retrieve {
        stream: true,
        starting_after: Some(7),
    };
    assert_eq!(read.unwrap(), want);
    assert_eq!(
        Retrieve::parse(&query(&[("include[]", "x")])),
        Ok(Retrieve::default())
    );
    for (key, value) in [("stream", "maybe"), ("starting_after", "-1")] {
        let e = Retrieve::parse(&query(&[(key, value)])).unwrap_err();
        assert_eq!(e.param, key);
    }
}
