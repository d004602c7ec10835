//! The domain errors a function reports to the host.
//!
//! Returning an [`Error`] is the function saying "this input (or these parameters) cannot be
//! handled": the host dead-letters the input with the error as its reason and keeps the instance.
//! A panic, by contrast, is a fault: the instance is discarded and created anew.

use std::fmt;

use crate::context::StateError;

/// A domain error returned by `init`, `process` or `decode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The parameters cannot be used; says which and why.
    InvalidParams(String),
    /// The input cannot be processed; says why.
    InvalidInput(String),
    /// Any other failure the function reports instead of panicking.
    Failed(String),
}

impl Error {
    /// An [`Error::InvalidParams`] with this reason.
    pub fn invalid_params(reason: impl fmt::Display) -> Self {
        Self::InvalidParams(reason.to_string())
    }

    /// An [`Error::InvalidInput`] with this reason.
    pub fn invalid_input(reason: impl fmt::Display) -> Self {
        Self::InvalidInput(reason.to_string())
    }

    /// An [`Error::Failed`] with this reason.
    pub fn failed(reason: impl fmt::Display) -> Self {
        Self::Failed(reason.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidParams(reason) => write!(f, "invalid params: {reason}"),
            Self::InvalidInput(reason) => write!(f, "invalid input: {reason}"),
            Self::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<StateError> for Error {
    fn from(error: StateError) -> Self {
        Self::Failed(error.to_string())
    }
}
