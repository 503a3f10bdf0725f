//! Small pieces of English shared by every layer's messages. Pure; imports nothing.

/// `1 user`, `2 users`: a count and a word made plural by an `s` when the count is not 1.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The `s` that makes a word plural for `n`: `""` for 1, `"s"` otherwise.
pub fn s(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A user id as plan text and logs show it: as it is when it is one plain word, quoted with
/// escapes otherwise, so that a space, a quote or a control character in it stays visible.
pub fn quote_user(id: &str) -> String {
    let plain = !id.is_empty()
        && id
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
    if plain {
        id.to_owned()
    } else {
        format!("{id:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_quoted_only_when_a_plain_word_would_hide_something() {
        assert_eq!(quote_user("Mary"), "Mary");
        assert_eq!(quote_user("李雷"), "李雷");
        assert_eq!(quote_user("mary smith"), "\"mary smith\"");
        assert_eq!(quote_user("tab\there"), "\"tab\\there\"");
        assert_eq!(quote_user("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quote_user(" "), "\" \"");
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "call"), "1 call");
        assert_eq!(plural(0, "call"), "0 calls");
        assert_eq!(format!("2 file{}", s(2)), "2 files");
    }
}
