//! Text utilities.

use std::collections::BTreeMap;

weft_plugin::plugin! {
    /// Upper-case a string.
    #[command(name = "text.upper", resources = ["text"], version = "1.0.0")]
    fn upper(text: String) -> Result<String, String> {
        Ok(text.to_uppercase())
    }

    /// Reverse a string by characters.
    #[command(name = "text.reverse", resources = ["text"], version = "1.0.0")]
    fn reverse(text: String) -> Result<String, String> {
        Ok(text.chars().rev().collect())
    }

    /// Count words (whitespace-separated) and how often each lower-cased word occurs.
    #[command(name = "text.word_count", resources = ["text"], version = "1.0.0")]
    fn word_count(text: String) -> Result<serde_json::Value, String> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut words = 0u64;
        for word in text.split_whitespace() {
            let word: String = word
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if word.is_empty() {
                continue;
            }
            words += 1;
            *counts.entry(word).or_default() += 1;
        }
        Ok(serde_json::json!({ "words": words, "counts": counts }))
    }
}
