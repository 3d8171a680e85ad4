//! Erasing a deleted post's content (pure). X's developer terms expect
//! deleted content to be removed: wherever the post appears in a payload,
//! as the activity itself or embedded (retweeted, quoted, favorited, the
//! X Activity API's post), its text, entities and media go; the facts that
//! state depends on (ids, authors, times, reply and quote links) stay.

use std::collections::BTreeSet;

use serde_json::Value;

/// Fields of a post object that carry its content.
const CONTENT: &[&str] = &[
    "full_text",
    "extended_tweet",
    "extended_entities",
    "display_text_range",
    "attachments",
    "note_tweet",
];

/// A post object's ids: its `id_str` and `id` (string or number), if it
/// has a `text` (users, DMs' and likes' own ids have none).
fn post_ids(object: &serde_json::Map<String, Value>) -> impl Iterator<Item = String> + '_ {
    ["id_str", "id"]
        .into_iter()
        .filter(|_| object.contains_key("text"))
        .filter_map(|key| match object.get(key) {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Number(id)) => Some(id.to_string()),
            _ => None,
        })
}

fn is_post(object: &serde_json::Map<String, Value>, post_id: &str) -> bool {
    post_ids(object).any(|id| id == post_id)
}

/// Every post `value` holds, at any depth (the activity's own post, the
/// retweeted, quoted and favorited ones, a retweet of a quote's quoted
/// post): exactly the ids [`erase_post`] would erase. The consumer indexes
/// them per stored event (`event_posts`), so the erasure finds every copy.
/// Migration 20261205000016 finds the same with a JSON path (a test holds
/// the two to one answer).
pub fn posts_in(value: &Value) -> BTreeSet<String> {
    let mut posts = BTreeSet::new();
    collect_posts(value, &mut posts);
    posts
}

fn collect_posts(value: &Value, posts: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            posts.extend(post_ids(object));
            for child in object.values() {
                collect_posts(child, posts);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_posts(item, posts);
            }
        }
        _ => {}
    }
}

/// A retweet's own text is the retweeted post's ("RT @a: ..."): it goes
/// with it. (A quote's text is the quoting author's own.)
fn is_retweet_of(object: &serde_json::Map<String, Value>, post_id: &str) -> bool {
    object
        .get("retweeted_status")
        .and_then(Value::as_object)
        .is_some_and(|retweeted| is_post(retweeted, post_id))
        && object.contains_key("text")
}

/// Erases post `post_id` wherever it appears in `value`; `true` when
/// anything changed. Erased objects get `"text": ""`, empty `entities`, and
/// `"aaa_erased": true`, so analysts can tell erased from empty.
pub fn erase_post(value: &mut Value, post_id: &str) -> bool {
    match value {
        Value::Object(object) => {
            let mut changed = false;
            if (is_post(object, post_id) || is_retweet_of(object, post_id))
                && object.get("aaa_erased") != Some(&Value::Bool(true))
            {
                object.insert("text".into(), Value::String(String::new()));
                if object.contains_key("entities") {
                    object.insert("entities".into(), Value::Object(Default::default()));
                }
                for field in CONTENT {
                    object.remove(*field);
                }
                object.insert("aaa_erased".into(), Value::Bool(true));
                changed = true;
            }
            for child in object.values_mut() {
                changed |= erase_post(child, post_id);
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| erase_post(item, post_id) | changed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn erases_the_post_and_its_embedded_copies_and_keeps_the_facts() {
        let mut retweet = json!({
            "id_str": "2", "text": "RT @a: secret", "created_at": "Wed Oct 10 20:19:24 +0000 2018",
            "retweeted_status": {
                "id_str": "1", "id": 1, "text": "secret", "user": {"id_str": "9"},
                "created_at": "Wed Oct 10 20:19:24 +0000 2018",
                "extended_tweet": {"full_text": "secret and longer"},
                "entities": {"media": [{"url": "https://pic"}]},
                "extended_entities": {"media": []},
                "in_reply_to_status_id_str": "0"
            }
        });
        assert!(erase_post(&mut retweet, "1"));
        let original = &retweet["retweeted_status"];
        assert_eq!(original["text"], "");
        assert_eq!(original["entities"], json!({}));
        assert!(original.get("extended_tweet").is_none());
        assert!(original.get("extended_entities").is_none());
        assert_eq!(original["aaa_erased"], true);
        assert_eq!(original["id_str"], "1");
        assert_eq!(original["user"]["id_str"], "9");
        assert_eq!(original["in_reply_to_status_id_str"], "0");
        // The retweet's own text is a copy of the post's: erased too.
        assert_eq!(retweet["text"], "");
        assert_eq!(retweet["id_str"], "2");
        // A quote's text is its author's own: kept.
        let mut quote = json!({"id_str": "3", "text": "mine", "quoted_status": {"id_str": "1", "text": "secret"}});
        assert!(erase_post(&mut quote, "1"));
        assert_eq!(quote["text"], "mine");
        assert_eq!(quote["quoted_status"]["text"], "");
        // Erasing twice changes nothing more.
        assert!(!erase_post(&mut retweet, "1"));
    }

    #[test]
    fn finds_every_post_held_at_any_depth_and_nothing_else() {
        // A retweet of a quote of post 1: the quote's quoted post is two
        // levels down.
        let retweet_of_quote = json!({
            "id_str": "3", "text": "RT @b: look", "user": {"id_str": "9", "name": "n"},
            "retweeted_status": {"id_str": "2", "id": 2, "text": "look", "user": {"id_str": "8"},
                "quoted_status": {"id_str": "1", "text": "secret", "user": {"id_str": "7"}}}
        });
        let posts: Vec<String> = posts_in(&retweet_of_quote).into_iter().collect();
        assert_eq!(posts, ["1", "2", "3"]);
        let mut erased = retweet_of_quote.clone();
        assert!(erase_post(&mut erased, "1"));
        assert_eq!(erased["retweeted_status"]["quoted_status"]["text"], "");
        // A like's own id and the liker are not posts; XAA posts are.
        let like = json!({"id": "f", "favorited_status": {"id": 7, "text": "hi"}, "user": {"id_str": "5"}});
        assert_eq!(posts_in(&like).into_iter().collect::<Vec<_>>(), ["7"]);
        let xaa =
            json!({"data": {"payload": {"post": {"id": "11", "text": "x", "author_id": "3"}}}});
        assert_eq!(posts_in(&xaa).into_iter().collect::<Vec<_>>(), ["11"]);
    }

    #[test]
    fn finds_favorited_and_xaa_posts_and_leaves_others() {
        let mut favorite = json!({"id": "f", "favorited_status": {"id": 7, "text": "hi"}});
        assert!(erase_post(&mut favorite, "7"));
        assert_eq!(favorite["favorited_status"]["text"], "");
        let mut xaa = json!([{"id": "7", "text": "hi", "author_id": "3"}]);
        assert!(erase_post(&mut xaa, "7"));
        assert_eq!(xaa[0]["author_id"], "3");
        let mut other = json!({"id_str": "8", "text": "keep"});
        assert!(!erase_post(&mut other, "7"));
        assert_eq!(other["text"], "keep");
    }
}
