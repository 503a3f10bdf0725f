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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "call"), "1 call");
        assert_eq!(plural(0, "call"), "0 calls");
        assert_eq!(format!("2 file{}", s(2)), "2 files");
    }
}
