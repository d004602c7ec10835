//! Custom window aggregates: the [`Accumulator`] trait and the byte protocol the host speaks.
//!
//! The host keeps one partial per window and series, as bytes. This module turns them into the
//! function's own [`Accumulator::Partial`] and back, with CBOR (serde), so function authors
//! work with plain Rust values. The export glue and unit tests both go through
//! [`AccumulatorProtocol`], so a test exercises the exact encoding the host sees.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Timestamp};

/// A custom window aggregate: the host's window stage keeps one [`Accumulator::Partial`] per
/// window and series, next to its built-in aggregate, commits it with the batch that produced
/// it, and sends it (with what [`Accumulator::finish`] makes of it) in every window emission.
///
/// The host relies on two laws; property-test them (see the `histogram` function):
/// - adding readings in several calls equals adding them in one, in any order (readings arrive
///   in batches, late ones after later ones);
/// - `merge(p, q)` equals adding `q`'s readings to `p` (sessions that a late reading joins are
///   merged; a full outbox merges windows; central consumers may merge further).
///
/// Every call must depend on its arguments and the parameters only: there is no clock and no
/// state (the partial is the state). Return an [`Error`] for readings you cannot take: the host
/// dead-letters them and counts them missing in that window. A panic is a fault: the same, and
/// the host starts a fresh instance.
pub trait Accumulator: Sized + 'static {
    /// The function's parameters, deserialized from the JSON object the host passes.
    type Params: DeserializeOwned;
    /// What the host keeps per window. `Default` is the partial of no readings.
    type Partial: Serialize + DeserializeOwned + Default;

    /// Creates the instance. Refuse unusable parameters with [`Error::InvalidParams`].
    fn init(params: Self::Params) -> Result<Self, Error>;

    /// Adds readings to `partial`: event times (ns since the Unix epoch) and values, in no
    /// particular order.
    fn add(&self, partial: &mut Self::Partial, ts: &[i64], values: &[f64]) -> Result<(), Error>;

    /// Adds the readings of `other` to `partial`.
    fn merge(&self, partial: &mut Self::Partial, other: Self::Partial) -> Result<(), Error>;

    /// The aggregate's values for the window `[start, end)`: named numbers, names unique and not
    /// empty.
    fn finish(&self, partial: &Self::Partial, start: Timestamp, end: Timestamp) -> Result<Vec<(String, f64)>, Error>;
}

/// The byte protocol over an [`Accumulator`]: what the host calls, as the export glue runs it.
/// Use it natively in unit tests: partials are encoded and decoded between calls exactly as they
/// are when the host keeps them.
///
/// ```
/// use serde::Deserialize;
/// use weir_sdk::{Accumulator, AccumulatorProtocol, Error, Timestamp};
///
/// /// Counts readings above a limit.
/// struct Above(f64);
///
/// #[derive(Deserialize)]
/// struct Params { limit: f64 }
///
/// impl Accumulator for Above {
///     type Params = Params;
///     type Partial = u64;
///
///     fn init(params: Params) -> Result<Self, Error> {
///         Ok(Self(params.limit))
///     }
///
///     fn add(&self, count: &mut u64, _ts: &[i64], values: &[f64]) -> Result<(), Error> {
///         *count += values.iter().filter(|v| **v > self.0).count() as u64;
///         Ok(())
///     }
///
///     fn merge(&self, count: &mut u64, other: u64) -> Result<(), Error> {
///         *count += other;
///         Ok(())
///     }
///
///     fn finish(&self, count: &u64, _: Timestamp, _: Timestamp) -> Result<Vec<(String, f64)>, Error> {
///         Ok(vec![("above".into(), *count as f64)])
///     }
/// }
///
/// // In a function crate, this line makes the type the component's export:
/// // weir_sdk::export_accumulator!(Above);
///
/// let above = AccumulatorProtocol::<Above>::init(r#"{"limit": 80}"#).unwrap();
/// let empty = above.create().unwrap();
/// let a = above.add(&empty, &[1, 2], &[79.0, 81.0]).unwrap();
/// let b = above.add(&empty, &[3], &[90.0]).unwrap();
/// let both = above.merge(&a, &b).unwrap();
/// assert_eq!(above.finish(&both, 0, 10).unwrap(), [("above".to_string(), 2.0)]);
/// ```
#[derive(Debug)]
pub struct AccumulatorProtocol<A>(A);

impl<A: Accumulator> AccumulatorProtocol<A> {
    /// Parses the JSON parameters and initialises the accumulator.
    pub fn init(params_json: &str) -> Result<Self, Error> {
        let params = crate::__private::parse_params(params_json)?;
        A::init(params).map(Self)
    }

    /// The partial of no readings, encoded.
    pub fn create(&self) -> Result<Vec<u8>, Error> {
        encode(&A::Partial::default())
    }

    /// `partial` with the readings added.
    pub fn add(&self, partial: &[u8], ts: &[i64], values: &[f64]) -> Result<Vec<u8>, Error> {
        if ts.len() != values.len() {
            return Err(Error::invalid_input(format!("{} event times for {} values", ts.len(), values.len())));
        }
        let mut partial = decode::<A::Partial>(partial)?;
        self.0.add(&mut partial, ts, values)?;
        encode(&partial)
    }

    /// One partial holding the readings of both.
    pub fn merge(&self, first: &[u8], second: &[u8]) -> Result<Vec<u8>, Error> {
        let mut partial = decode::<A::Partial>(first)?;
        self.0.merge(&mut partial, decode(second)?)?;
        encode(&partial)
    }

    /// The window's values.
    pub fn finish(&self, partial: &[u8], start: i64, end: i64) -> Result<Vec<(String, f64)>, Error> {
        let partial = decode::<A::Partial>(partial)?;
        self.0.finish(&partial, Timestamp::from_nanos(start), Timestamp::from_nanos(end))
    }
}

fn encode<P: Serialize>(partial: &P) -> Result<Vec<u8>, Error> {
    minicbor_serde::to_vec(partial).map_err(|e| Error::failed(format!("cannot encode the partial: {e}")))
}

fn decode<P: DeserializeOwned>(bytes: &[u8]) -> Result<P, Error> {
    minicbor_serde::from_slice(bytes).map_err(|e| {
        Error::invalid_input(format!("the partial is not one this function wrote (another version?): {e}"))
    })
}
