//! Secrets read from files: passwords, private keys, NATS credentials and nkey seeds.
//!
//! **Invariant:** a [`Secret`]'s `Debug` shows neither its value nor its length, so printing a
//! configuration, a broker's settings or an error that holds one never shows the secret.

use std::fmt;

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value, for the one place that hands it to a broker client.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_shows_neither_the_value_nor_its_length() {
        let shown = format!("{:?}", Some(Secret::new("hunter2".to_owned())));
        assert_eq!(shown, "Some(Secret(***))");
    }
}
