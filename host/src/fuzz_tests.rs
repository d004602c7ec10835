//! Fuzzing of everything that reads bytes or text from outside: the built-in decoders (message
//! payloads from brokers), the record reader (`weir_record::read`: outbox entries, consumers' input),
//! the dead-letter reader (`state::DeadLetter::from_bytes`) and the configuration parser
//! (`config::parse`).
//!
//! **Property**, for each: no panic, no hang, and no single allocation out of proportion to the
//! input ([`ALLOCATION_ALLOWANCE`] plus [`ALLOCATION_PER_BYTE`] per input byte, measured by a
//! test-only global allocator); the answer is a typed error or a well-formed value — a decoded
//! batch holds the batch invariant and only finite readings, a record read back re-encodes and
//! reads the same again, a dead letter re-encodes to itself, a configuration has pipelines and a
//! refusal has located problems.
//!
//! **Inputs** are seldom uniformly random bytes (which rarely get past the first byte): valid
//! payloads, records, dead letters and configurations made by the real encoders or taken from the
//! tests, and generated structures (well-formed CBOR of nested maps, arrays and tags whose keys
//! are the fields the code looks for; JSON of the same shapes), then mutated — bit flips,
//! interesting bytes, truncation, insertion, deletion, splicing, repetition (deep nesting, long
//! strings), huge CBOR lengths, NaN and infinity. Configurations are mutated by line: values
//! changed, lines deleted, tables duplicated, Unicode and huge numbers inserted.
//!
//! **Size.** `WEIR_FUZZ_CASES` cases per property (default [`DEFAULT_CASES`]; `PROPTEST_CASES` is
//! not read). `WEIR_FUZZ_SECONDS=<n>` runs each property again with fresh seeds until `n` seconds
//! have passed — the long runs recorded in docs/durability.md:
//!
//! ```sh
//! WEIR_FUZZ_SECONDS=120 cargo test -p weir-host --lib fuzz_tests::decoders -- --nocapture --test-threads=1
//! ```
//!
//! Each property prints its case count, slowest case and largest allocation to stderr. Failing
//! seeds are kept in `host/proptest-regressions/fuzz_tests.txt` and replayed first.

use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{FileFailurePersistence, TestCaseResult, TestRunner};

/// Cases per property when `WEIR_FUZZ_CASES` is not set: the whole set takes well under a
/// minute in a debug build.
const DEFAULT_CASES: u32 = 1_000;

/// Largest single allocation any input may cause, beyond [`ALLOCATION_PER_BYTE`] per byte.
const ALLOCATION_ALLOWANCE: usize = 4 << 20;

/// Allocation allowed per input byte (a JSON value is 32 bytes and a vector doubles).
const ALLOCATION_PER_BYTE: usize = 64;

/// Longest input the mutations build (repetition is cut here).
const MAX_INPUT: usize = 256 * 1024;

/// A test-only global allocator: it forwards every call to the system allocator and notes the
/// largest request made on each thread, so a property can bound what one input makes the code
/// under test allocate.
#[allow(unsafe_code)] // A `GlobalAlloc` cannot be written without `unsafe`; it only forwards.
mod probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    struct Probe;

    #[global_allocator]
    static PROBE: Probe = Probe;

    fn note(size: usize) {
        // Nothing is noted while the thread's locals are being torn down; a `const` thread
        // local of a `Cell<usize>` needs no allocation, so this never recurses.
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }

    // SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
    // `GlobalAlloc` contract; `note` neither allocates nor touches the memory.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's guarantees about `layout` are passed on as they are.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: as for `dealloc`; the caller's guarantees about `new_size` are passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f`; returns its result and the largest single allocation it requested.
    pub(super) fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|largest| largest.set(0));
        let out = f();
        (out, LARGEST.with(Cell::get))
    }
}

thread_local! {
    /// Largest allocation seen by [`bounded`] in the running property (for its report).
    static LARGEST_SEEN: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` on an input of `input_len` bytes; fails the case when one allocation it made was out
/// of proportion to the input.
fn bounded<T>(input_len: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let (out, largest) = probe::largest_allocation(f);
    LARGEST_SEEN.with(|seen| seen.set(seen.get().max(largest)));
    let limit = ALLOCATION_ALLOWANCE + ALLOCATION_PER_BYTE * input_len;
    if largest > limit {
        return Err(TestCaseError::fail(format!(
            "an input of {input_len} bytes made one allocation of {largest} bytes (limit {limit})"
        )));
    }
    Ok(out)
}

/// How long to fuzz, from the environment.
struct Budget {
    cases: u32,
    seconds: Option<u64>,
}

impl Budget {
    fn from_env() -> Self {
        fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
            let text = std::env::var(name).ok()?;
            Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")))
        }
        Self { cases: number("WEIR_FUZZ_CASES").unwrap_or(DEFAULT_CASES), seconds: number("WEIR_FUZZ_SECONDS") }
    }
}

/// Runs `check` on inputs from `strategy` for the budget; panics with the smallest failing input.
fn fuzz<S>(name: &str, strategy: S, check: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = Budget::from_env();
    let started = Instant::now();
    let cases = Cell::new(0u64);
    let slowest = Cell::new(Duration::ZERO);
    let checking = Cell::new(Duration::ZERO);
    LARGEST_SEEN.with(|seen| seen.set(0));
    loop {
        let config = ProptestConfig {
            cases: budget.cases,
            source_file: Some(file!()),
            failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel("proptest-regressions"))),
            ..ProptestConfig::default()
        };
        // A fresh runner draws a fresh random seed.
        let outcome = TestRunner::new(config).run(&strategy, |input| {
            let start = Instant::now();
            let result = check(input);
            let took = start.elapsed();
            cases.set(cases.get() + 1);
            slowest.set(slowest.get().max(took));
            checking.set(checking.get() + took);
            result
        });
        if let Err(failure) = outcome {
            panic!("{name}: {failure}");
        }
        if budget.seconds.is_none_or(|seconds| started.elapsed() >= Duration::from_secs(seconds)) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {} cases in {:.1} s ({:.1} s in the code under test), slowest case {:.1} ms, \
         largest allocation {} bytes",
        cases.get(),
        started.elapsed().as_secs_f64(),
        checking.get().as_secs_f64(),
        slowest.get().as_secs_f64() * 1e3,
        LARGEST_SEEN.with(Cell::get),
    );
}

/// Mutations of byte strings.
mod mutate {
    use super::*;

    /// One change to an input; positions are fractions of its length, so they shrink well.
    #[derive(Clone, Debug)]
    pub(super) enum Mutation {
        /// Flip one bit.
        FlipBit(Index, u8),
        /// Overwrite one byte.
        SetByte(Index, u8),
        /// Cut the input here.
        Truncate(Index),
        /// Insert these bytes here.
        Insert(Index, Vec<u8>),
        /// Delete up to this many bytes from here.
        Delete(Index, usize),
        /// Repeat the bytes from here (up to a length) this many times: deep nesting, long runs.
        Repeat(Index, usize, usize),
        /// Insert a token this many times: nesting by a prefix.
        Nest(Index, Vec<u8>, usize),
        /// Replace everything from here by the tail of another input.
        Splice(Index, Vec<u8>, Index),
    }

    /// The position `index` picks in `0..=len`.
    fn at(index: &Index, len: usize) -> usize {
        index.index(len + 1)
    }

    /// `input` after `mutations`, at most [`MAX_INPUT`] bytes long.
    pub(super) fn apply(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for mutation in mutations {
            let len = input.len();
            match mutation {
                Mutation::FlipBit(i, bit) if len > 0 => input[i.index(len)] ^= 1 << (bit % 8),
                Mutation::SetByte(i, byte) if len > 0 => input[i.index(len)] = *byte,
                Mutation::FlipBit(..) | Mutation::SetByte(..) => {}
                Mutation::Truncate(i) => input.truncate(at(i, len)),
                Mutation::Insert(i, bytes) => {
                    let p = at(i, len);
                    input.splice(p..p, bytes.iter().copied());
                }
                Mutation::Delete(i, n) => {
                    let p = at(i, len);
                    input.drain(p..(p + n).min(len));
                }
                Mutation::Repeat(i, n, times) => {
                    let p = at(i, len);
                    let piece = input[p..(p + n).min(len)].to_vec();
                    if !piece.is_empty() {
                        let times = (*times).min(MAX_INPUT / piece.len());
                        let repeated: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * times).collect();
                        input.splice(p..p, repeated);
                    }
                }
                Mutation::Nest(i, token, times) => {
                    let p = at(i, len);
                    let times = (*times).min(MAX_INPUT / token.len().max(1));
                    let nested: Vec<u8> = token.iter().copied().cycle().take(token.len() * times).collect();
                    input.splice(p..p, nested);
                }
                Mutation::Splice(i, other, j) => {
                    input.truncate(at(i, len));
                    input.extend_from_slice(&other[at(j, other.len())..]);
                }
            }
            input.truncate(MAX_INPUT);
        }
        input
    }

    /// A byte that often matters: limits of CBOR's initial bytes, JSON's punctuation.
    fn interesting_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            any::<u8>(),
            prop::sample::select(vec![
                0x00, 0x17, 0x18, 0x1b, 0x1f, 0x20, 0x3b, 0x40, 0x5b, 0x5f, 0x60, 0x7b, 0x7f, 0x80, 0x9b, 0x9f, 0xa0,
                0xbb, 0xbf, 0xc0, 0xc6, 0xdb, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xff, b'"', b'\\', b'{',
                b'}', b'[', b']', b',', b':', b'-', b'.', b'e', b'0', b'9', b'\n',
            ]),
        ]
    }

    /// Mutations drawing inserted bytes from `tokens` (and at random) and spliced tails from
    /// `others`.
    pub(super) fn mutation(tokens: &'static [&'static [u8]], others: Vec<Vec<u8>>) -> impl Strategy<Value = Mutation> {
        let token = prop::sample::select(tokens).prop_map(<[u8]>::to_vec);
        let inserted = prop_oneof![token.clone(), prop::collection::vec(any::<u8>(), 1..12)];
        let other = prop::sample::select(others);
        prop_oneof![
            3 => (any::<Index>(), any::<u8>()).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
            3 => (any::<Index>(), interesting_byte()).prop_map(|(i, byte)| Mutation::SetByte(i, byte)),
            2 => any::<Index>().prop_map(Mutation::Truncate),
            4 => (any::<Index>(), inserted).prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
            2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
            1 => (any::<Index>(), 1usize..16, 2usize..5_000).prop_map(|(i, n, times)| Mutation::Repeat(i, n, times)),
            1 => (any::<Index>(), token, prop_oneof![2usize..100, 100usize..100_000])
                .prop_map(|(i, token, times)| Mutation::Nest(i, token, times)),
            1 => (any::<Index>(), other, any::<Index>()).prop_map(|(i, other, j)| Mutation::Splice(i, other, j)),
        ]
    }

    /// Inputs from `base`, mutated 0 to 5 times.
    pub(super) fn mutated(
        base: impl Strategy<Value = Vec<u8>>,
        tokens: &'static [&'static [u8]],
        others: Vec<Vec<u8>>,
    ) -> impl Strategy<Value = Vec<u8>> {
        (base, prop::collection::vec(mutation(tokens, others), 0..6))
            .prop_map(|(input, mutations)| apply(input, &mutations))
    }

    /// Tokens worth inserting into CBOR: huge lengths, indefinite items, breaks, tags, floats
    /// that are NaN or infinite, nesting prefixes.
    pub(super) const CBOR_TOKENS: &[&[u8]] = &[
        &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x5a, 0x7f, 0xff, 0xff, 0xff],
        &[0x7b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x9a, 0xff, 0xff, 0xff, 0xff],
        &[0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xdb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x5f],
        &[0x7f],
        &[0x9f],
        &[0xbf],
        &[0xff],
        &[0x81],
        &[0xa1, 0x61, 0x61],
        &[0xa1, 0x00],
        &[0xc0],
        &[0xc6],
        &[0xd8, 0xff],
        &[0xf9, 0x7e, 0x00],
        &[0xf9, 0x7c, 0x00],
        &[0xfa, 0xff, 0x80, 0x00, 0x00],
        &[0xfb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0],
        &[0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1],
        &[0xfb, 0x7f, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xf8, 0x10],
        &[0xf7],
        &[0x1c],
        &[0x60],
        &[0x62, 0xc3, 0x28],
    ];

    /// Tokens worth inserting into JSON.
    pub(super) const JSON_TOKENS: &[&[u8]] = &[
        b"[",
        b"{",
        b"]",
        b"}",
        b"{\"a\":",
        b"[[",
        b"\"",
        b"\\u0000",
        b"\\ud800",
        b"1e999",
        b"-1e999",
        b"1e308",
        b"NaN",
        b"Infinity",
        b"-0",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"0.000000000000000000000000000000000000000000000001",
        b"null",
        b"true",
        b"\"2024-05-01T12:00:00Z\"",
        b"\"9999-12-31T23:59:59.999999999+23:59\"",
        b",",
        b":",
        b"\xff",
        b"\xc3\xa9",
        b"\xf0\x9f\xa6\x80",
    ];
}

/// Generated CBOR: well-formed items of nested maps, arrays and tags, also written as JSON.
mod cbor {
    use super::*;

    /// One CBOR data item.
    #[derive(Clone, Debug)]
    pub(super) enum Item {
        Unsigned(u64),
        /// The integer -1 - n.
        Negative(u64),
        Bytes(Vec<u8>),
        Text(String),
        /// Items, and whether the length is indefinite.
        Array(Vec<Item>, bool),
        Map(Vec<(Item, Item)>, bool),
        Tag(u64, Box<Item>),
        /// Simple values: 20 false, 21 true, 22 null, 23 undefined.
        Simple(u8),
        Half(u16),
        Single(u32),
        Double(u64),
    }

    fn head(out: &mut Vec<u8>, major: u8, argument: u64) {
        let major = major << 5;
        match argument {
            0..=23 => out.push(major | argument as u8),
            24..=0xff => out.extend([major | 24, argument as u8]),
            0x100..=0xffff => {
                out.push(major | 25);
                out.extend((argument as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(major | 26);
                out.extend((argument as u32).to_be_bytes());
            }
            _ => {
                out.push(major | 27);
                out.extend(argument.to_be_bytes());
            }
        }
    }

    impl Item {
        pub(super) fn text(text: &str) -> Self {
            Self::Text(text.to_owned())
        }

        pub(super) fn int(value: i64) -> Self {
            if value >= 0 { Self::Unsigned(value.unsigned_abs()) } else { Self::Negative((-1 - value).unsigned_abs()) }
        }

        pub(super) fn map(entries: Vec<(Item, Item)>) -> Self {
            Self::Map(entries, false)
        }

        pub(super) fn array(items: Vec<Item>) -> Self {
            Self::Array(items, false)
        }

        /// The item in CBOR.
        pub(super) fn to_cbor(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.write_cbor(&mut out);
            out
        }

        fn write_cbor(&self, out: &mut Vec<u8>) {
            match self {
                Self::Unsigned(n) => head(out, 0, *n),
                Self::Negative(n) => head(out, 1, *n),
                Self::Bytes(bytes) => {
                    head(out, 2, bytes.len() as u64);
                    out.extend(bytes);
                }
                Self::Text(text) => {
                    head(out, 3, text.len() as u64);
                    out.extend(text.as_bytes());
                }
                Self::Array(items, indefinite) => {
                    if *indefinite {
                        out.push(0x9f);
                    } else {
                        head(out, 4, items.len() as u64);
                    }
                    items.iter().for_each(|item| item.write_cbor(out));
                    if *indefinite {
                        out.push(0xff);
                    }
                }
                Self::Map(entries, indefinite) => {
                    if *indefinite {
                        out.push(0xbf);
                    } else {
                        head(out, 5, entries.len() as u64);
                    }
                    for (key, value) in entries {
                        key.write_cbor(out);
                        value.write_cbor(out);
                    }
                    if *indefinite {
                        out.push(0xff);
                    }
                }
                Self::Tag(tag, item) => {
                    head(out, 6, *tag);
                    item.write_cbor(out);
                }
                Self::Simple(n) if *n < 24 => out.push(0xe0 | n),
                Self::Simple(n) => out.extend([0xf8, *n]),
                Self::Half(bits) => {
                    out.push(0xf9);
                    out.extend(bits.to_be_bytes());
                }
                Self::Single(bits) => {
                    out.push(0xfa);
                    out.extend(bits.to_be_bytes());
                }
                Self::Double(bits) => {
                    out.push(0xfb);
                    out.extend(bits.to_be_bytes());
                }
            }
        }

        /// The item as JSON text, as near as JSON gets: bytes become hex text, tags and simple
        /// values other than booleans and null disappear, NaN and infinity become `1e999`.
        pub(super) fn to_json(&self) -> Vec<u8> {
            let mut out = String::new();
            self.write_json(&mut out);
            out.into_bytes()
        }

        fn write_json(&self, out: &mut String) {
            let float = |out: &mut String, value: f64| {
                if value.is_finite() {
                    out.push_str(&format!("{value:?}"));
                } else {
                    out.push_str(if value < 0.0 { "-1e999" } else { "1e999" });
                }
            };
            match self {
                Self::Unsigned(n) => out.push_str(&n.to_string()),
                Self::Negative(n) => out.push_str(&(-1 - i128::from(*n)).to_string()),
                Self::Bytes(bytes) => out.push_str(&format!("\"{}\"", hex::encode(bytes))),
                Self::Text(text) => out.push_str(&serde_json::Value::from(text.as_str()).to_string()),
                Self::Array(items, _) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        item.write_json(out);
                    }
                    out.push(']');
                }
                Self::Map(entries, _) => {
                    out.push('{');
                    for (i, (key, value)) in entries.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        match key {
                            Self::Text(_) => key.write_json(out),
                            other => {
                                let mut inner = String::new();
                                other.write_json(&mut inner);
                                out.push_str(&serde_json::Value::from(inner).to_string());
                            }
                        }
                        out.push(':');
                        value.write_json(out);
                    }
                    out.push('}');
                }
                Self::Tag(_, item) => item.write_json(out),
                Self::Simple(20) => out.push_str("false"),
                Self::Simple(21) => out.push_str("true"),
                Self::Simple(_) => out.push_str("null"),
                Self::Half(bits) => float(out, f64::from(half::f16::from_bits(*bits))),
                Self::Single(bits) => float(out, f64::from(f32::from_bits(*bits))),
                Self::Double(bits) => float(out, f64::from_bits(*bits)),
            }
        }
    }

    /// Integers near the limits of each width, and any.
    pub(super) fn interesting_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..30,
            prop::sample::select(vec![
                0xff,
                0x100,
                0xffff,
                0x1_0000,
                0xffff_ffff,
                0x1_0000_0000,
                1_700_000_000,
                1_700_000_000_000,
                1_700_000_000_000_000_000,
                i64::MAX as u64,
                i64::MAX as u64 + 1,
                u64::MAX,
            ]),
            any::<u64>(),
        ]
    }

    /// Texts: the names and times the decoders look for, odd Unicode, long runs, any.
    pub(super) fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "",
                "a",
                "plant1/boiler/temp",
                "dev/",
                "urn:dev:ow:10e2073a01080063:",
                "Cel",
                "%RH",
                "2024-05-01T12:00:00Z",
                "2024-05-01T12:00:00.123456789+02:00",
                "1677-09-21T00:12:43Z",
                "2262-04-11T23:47:17Z",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z",
                " bad",
                "é",
                "\u{0}",
                "\u{202e}",
                "\u{fffe}",
                "🦀",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,12}",
            (1usize..5_000).prop_map(|n| "a".repeat(n)),
        ]
    }

    /// Float bit patterns: NaN, infinities, signed zero, limits, subnormals, any.
    fn float() -> impl Strategy<Value = Item> {
        let doubles = prop_oneof![
            prop::sample::select(vec![
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                5e-324,
                1e300,
                21.5,
                1.7e9,
                268_435_455.0,
                268_435_456.0,
                9.3e9,
            ]),
            any::<f64>(),
        ];
        prop_oneof![
            doubles.prop_map(|v: f64| Item::Double(v.to_bits())),
            any::<u16>().prop_map(Item::Half),
            prop::sample::select(vec![0x7e00u16, 0x7c00, 0xfc00, 0x8000, 0x7bff, 0x0001]).prop_map(Item::Half),
            any::<u32>().prop_map(Item::Single),
        ]
    }

    /// A single, non-nested item.
    pub(super) fn leaf() -> BoxedStrategy<Item> {
        prop_oneof![
            3 => interesting_u64().prop_map(Item::Unsigned),
            2 => interesting_u64().prop_map(Item::Negative),
            3 => float(),
            3 => text().prop_map(Item::Text),
            1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Item::Bytes),
            2 => prop_oneof![20u8..24, any::<u8>()].prop_map(Item::Simple),
        ]
        .boxed()
    }

    /// Nested items whose map keys are often from `keys` (the fields the reader looks for).
    pub(super) fn nested(keys: Vec<Item>) -> BoxedStrategy<Item> {
        leaf()
            .prop_recursive(6, 96, 8, move |inner| {
                let key = prop_oneof![3 => prop::sample::select(keys.clone()), 1 => inner.clone()];
                prop_oneof![
                    (prop::collection::vec(inner.clone(), 0..8), prop::bool::weighted(0.2))
                        .prop_map(|(items, indefinite)| Item::Array(items, indefinite)),
                    (prop::collection::vec((key, inner.clone()), 0..8), prop::bool::weighted(0.2))
                        .prop_map(|(entries, indefinite)| Item::Map(entries, indefinite)),
                    (interesting_u64(), inner).prop_map(|(tag, item)| Item::Tag(tag, Box::new(item))),
                ]
            })
            .boxed()
    }

    /// A map whose keys are from `keys` and values from `value`.
    pub(super) fn object(keys: Vec<Item>, value: BoxedStrategy<Item>) -> BoxedStrategy<Item> {
        prop::collection::vec((prop::sample::select(keys), value), 0..8).prop_map(Item::map).boxed()
    }
}

/// The built-in decoders.
mod decoders {
    use bytes::Bytes;

    use super::cbor::Item;
    use super::*;
    use crate::batch::{Batch, CallContext, Message};
    use crate::config::{DecodeConfig, FieldMapping, JsonPointer, NumberEncoding, TimeUnit, ValueFields};
    use crate::decode::{self, DecodeError};

    const CTX: CallContext = CallContext { processing_time: 0, watermark: 0 };

    /// Decodes `payload` with the decoder `config` describes and checks the answer.
    fn decodes_or_refuses(config: &DecodeConfig, received_at: i64, payload: &[u8]) -> TestCaseResult {
        let mut decoder = decode::builtin(config).expect("the fuzzed configs name built-in decoders");
        let message =
            Message { topic: "plant1/boiler/temp".into(), payload: Bytes::copy_from_slice(payload), received_at };
        match bounded(payload.len(), || decoder.decode(&message, &CTX))? {
            Ok(batch) => {
                prop_assert!(
                    batch.values().iter().all(|v| v.is_finite()),
                    "NaN or infinity decoded: {:?}",
                    batch.values()
                );
                let (series, series_idx, ts, values) = batch.into_columns();
                if let Err(broken) = Batch::from_columns(series, series_idx, ts, values) {
                    return Err(TestCaseError::fail(format!("decoded batch breaks the batch invariant: {broken}")));
                }
            }
            Err(error) => {
                let shown = error.to_string();
                prop_assert!(!shown.is_empty());
                prop_assert!(error.function().is_none(), "a built-in decoder named a function: {error:?}");
                if let DecodeError::NotFinite { value, .. } = error {
                    prop_assert!(!value.is_finite(), "a finite value refused as not finite: {shown}");
                }
            }
        }
        Ok(())
    }

    fn pointer(text: &str) -> JsonPointer {
        JsonPointer::try_from(text.to_owned()).expect("the fuzzed pointers are valid")
    }

    fn field_mapping() -> impl Strategy<Value = FieldMapping> {
        let pointers = || prop::sample::select(vec!["/sensor", "/ts", "/value", "/a/b", "/0", "/u", "value", "/~0~1"]);
        let values = prop_oneof![
            pointers().prop_map(|p| ValueFields::One(pointer(p))),
            prop::collection::vec(("[a-z]{1,3}", pointers()), 1..4)
                .prop_map(|fields| ValueFields::Many(fields.into_iter().map(|(n, p)| (n, pointer(p))).collect())),
        ];
        let time_unit = prop::sample::select(vec![TimeUnit::S, TimeUnit::Ms, TimeUnit::Us, TimeUnit::Ns]);
        (
            prop::option::weighted(0.7, pointers()),
            prop::sample::select(vec!["", "site/"]),
            prop::option::weighted(0.7, pointers()),
            time_unit,
            values,
            prop::option::of(Just("Cel")),
            prop::option::weighted(0.3, pointers()),
        )
            .prop_map(|(series, prefix, time, time_unit, values, unit, unit_field)| FieldMapping {
                series: series.map(pointer),
                series_prefix: prefix.to_owned(),
                time: time.map(pointer),
                time_unit,
                values,
                unit: unit.map(str::to_owned),
                unit_field: unit_field.map(pointer),
            })
    }

    fn received_at() -> impl Strategy<Value = i64> {
        prop_oneof![Just(1_700_000_000_000_000_000), Just(0), Just(i64::MAX), Just(i64::MIN), any::<i64>()]
    }

    /// Keys a field mapping looks for.
    fn mapping_keys() -> Vec<Item> {
        ["sensor", "ts", "value", "a", "b", "u", "0", "~/"].into_iter().map(Item::text).collect()
    }

    /// Objects (or arrays of them) with the fields a mapping looks for.
    fn mapping_document() -> impl Strategy<Value = Item> {
        let value = prop_oneof![3 => cbor::leaf(), 1 => cbor::nested(mapping_keys())].boxed();
        let object = cbor::object(mapping_keys(), value);
        prop_oneof![
            2 => object.clone(),
            2 => prop::collection::vec(object, 0..6).prop_map(Item::array),
            1 => cbor::nested(mapping_keys()),
        ]
    }

    /// SenML field names and their CBOR labels.
    fn senml_keys() -> Vec<Item> {
        let names =
            ["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "x_", "bn_"];
        names.into_iter().map(Item::text).chain((-6..=8).map(Item::int)).collect()
    }

    /// SenML packs: arrays of records with SenML fields.
    fn senml_pack() -> impl Strategy<Value = Item> {
        let value = prop_oneof![4 => cbor::leaf(), 1 => cbor::nested(senml_keys())].boxed();
        let record = cbor::object(senml_keys(), value);
        prop_oneof![
            4 => prop::collection::vec(record, 0..8).prop_map(Item::array),
            1 => cbor::nested(senml_keys()),
        ]
    }

    fn json_seeds() -> Vec<Vec<u8>> {
        [
            r#"{"sensor": "a", "ts": 1000, "value": 1.5}"#,
            r#"[{"sensor": "a", "ts": 1000, "value": 1.5}, {"sensor": "b", "ts": 2000, "value": true}]"#,
            r#"{"sensor": "dev1", "ts": "2024-05-01T12:00:00+02:00", "temp": 21.0, "u": "K"}"#,
            r#"{"sensor": "a", "ts": 1e30, "value": null}"#,
            r#"{"0": [1, 2, {"a": {"b": 3}}], "~/": 4}"#,
            r#"[{"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e9, "bu": "%RH", "v": 20},
                {"n": "lon", "u": "lon", "v": 24.30621}, {"n": "temp", "u": "Cel", "t": 60, "v": 23.1},
                {"n": "door", "vb": true}, {"n": "label", "vs": "ignored"}]"#,
            r#"[{"bn": "dev/", "bv": 100, "n": "a", "v": 5, "t": -10}, {"n": "b", "s": 7, "bs": 1}]"#,
            "21.5",
            " -0.0\n",
        ]
        .into_iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn cbor_seeds() -> Vec<Vec<u8>> {
        let mapping = Item::map(vec![
            (Item::text("sensor"), Item::text("c")),
            (Item::text("ts"), Item::Unsigned(5)),
            (Item::text("value"), Item::Double(2.25f64.to_bits())),
        ]);
        let pack = Item::array(vec![
            Item::map(vec![
                (Item::int(-2), Item::text("dev/")),
                (Item::int(-3), Item::Double(1.7e9f64.to_bits())),
                (Item::int(0), Item::text("t")),
            ]),
            Item::map(vec![(Item::int(2), Item::Single(21.5f32.to_bits())), (Item::int(1), Item::text("Cel"))]),
        ]);
        vec![mapping.to_cbor(), Item::array(vec![mapping.clone(), mapping]).to_cbor(), pack.to_cbor()]
    }

    /// JSON payloads: seeds and generated documents, mutated.
    fn json_payload(document: impl Strategy<Value = Item>) -> impl Strategy<Value = Vec<u8>> {
        let seeds = json_seeds();
        let base = prop_oneof![prop::sample::select(seeds.clone()), document.prop_map(|item| item.to_json())];
        mutate::mutated(base, mutate::JSON_TOKENS, seeds)
    }

    /// CBOR payloads: seeds and generated items, mutated.
    fn cbor_payload(document: impl Strategy<Value = Item>) -> impl Strategy<Value = Vec<u8>> {
        let seeds = cbor_seeds();
        let base = prop_oneof![prop::sample::select(seeds.clone()), document.prop_map(|item| item.to_cbor())];
        mutate::mutated(base, mutate::CBOR_TOKENS, seeds)
    }

    #[test]
    fn field_mapping_json() {
        let input = (field_mapping(), received_at(), json_payload(mapping_document()));
        fuzz("decoders::field_mapping_json", input, |(mapping, received_at, payload)| {
            decodes_or_refuses(&DecodeConfig::Json(mapping), received_at, &payload)
        });
    }

    #[test]
    fn field_mapping_cbor() {
        let input = (field_mapping(), received_at(), cbor_payload(mapping_document()));
        fuzz("decoders::field_mapping_cbor", input, |(mapping, received_at, payload)| {
            decodes_or_refuses(&DecodeConfig::Cbor(mapping), received_at, &payload)
        });
    }

    #[test]
    fn senml_json() {
        let input = (received_at(), json_payload(senml_pack()));
        fuzz("decoders::senml_json", input, |(received_at, payload)| {
            decodes_or_refuses(&DecodeConfig::SenmlJson, received_at, &payload)
        });
    }

    #[test]
    fn senml_cbor() {
        let input = (received_at(), cbor_payload(senml_pack()));
        fuzz("decoders::senml_cbor", input, |(received_at, payload)| {
            decodes_or_refuses(&DecodeConfig::SenmlCbor, received_at, &payload)
        });
    }

    #[test]
    fn raw_numbers() {
        let encoding = prop::sample::select(vec![
            NumberEncoding::Text,
            NumberEncoding::F32Be,
            NumberEncoding::F32Le,
            NumberEncoding::F64Be,
            NumberEncoding::F64Le,
        ]);
        let numbers = prop_oneof![
            prop::sample::select(vec![21.5, -0.0, f64::MAX, f64::MIN_POSITIVE, 5e-324, f64::NAN, f64::INFINITY]),
            any::<f64>(),
        ];
        let written = numbers.prop_flat_map(|v: f64| {
            prop::sample::select(vec![
                format!("{v}").into_bytes(),
                format!("{v:e}").into_bytes(),
                format!(" {v:?}\n").into_bytes(),
                (v as f32).to_be_bytes().to_vec(),
                (v as f32).to_le_bytes().to_vec(),
                v.to_be_bytes().to_vec(),
                v.to_le_bytes().to_vec(),
            ])
        });
        let texts: Vec<Vec<u8>> = ["NaN", "inf", "-infinity", "1e999", "+1.5E+3", "0x10", "1_000", ".5", "5."]
            .into_iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let base = prop_oneof![3 => written, 1 => prop::sample::select(texts.clone())];
        let input = (encoding, "[a-z/]{0,8}", received_at(), mutate::mutated(base, mutate::JSON_TOKENS, texts));
        fuzz("decoders::raw_numbers", input, |(encoding, prefix, received_at, payload)| {
            let config = DecodeConfig::RawNumber { encoding, series_prefix: prefix, unit: None };
            decodes_or_refuses(&config, received_at, &payload)
        });
    }

    /// Every built-in decoder over uniformly random bytes and arbitrary well-formed CBOR.
    #[test]
    fn every_decoder_on_any_bytes() {
        let config = prop_oneof![
            field_mapping().prop_map(DecodeConfig::Json),
            field_mapping().prop_map(DecodeConfig::Cbor),
            Just(DecodeConfig::SenmlJson),
            Just(DecodeConfig::SenmlCbor),
            Just(DecodeConfig::RawNumber { encoding: NumberEncoding::Text, series_prefix: String::new(), unit: None }),
        ];
        let keys: Vec<Item> = mapping_keys().into_iter().chain(senml_keys()).collect();
        let payload = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            cbor::nested(keys.clone()).prop_map(|item| item.to_cbor()),
            cbor::nested(keys).prop_map(|item| item.to_json()),
        ];
        fuzz("decoders::every_decoder_on_any_bytes", (config, payload), |(config, payload)| {
            decodes_or_refuses(&config, 1_700_000_000_000_000_000, &payload)
        });
    }
}

/// The record reader and the dead-letter reader.
mod records {
    use super::cbor::Item;
    use super::*;
    use crate::batch::{Batch, BatchBuilder, Nanos, Series};
    use crate::config::Encoding;
    use crate::state::{DeadLetter, DeadLetterContent, DeadLetterStage};
    use weir_record::{
        AggregateSeries, Coarsened, CustomWindow, Record, RecordHeader, Sketch, Span, TimedValue, Window, WindowSeries,
        WindowValue,
    };

    /// Readings per series in order, NaN payloads aside and, for JSON, any non-finite value as
    /// NaN — what a record promises to keep.
    fn per_series(batch: &Batch, json: bool) -> Vec<(String, Vec<(Nanos, u64)>)> {
        let mut out: Vec<(String, Vec<(Nanos, u64)>)> = Vec::new();
        for sample in batch.iter() {
            let lost = sample.value.is_nan() || (json && !sample.value.is_finite());
            let bits = if lost { f64::NAN.to_bits() } else { sample.value.to_bits() };
            match out.iter_mut().find(|(name, _)| *name == sample.series.name) {
                Some((_, readings)) => readings.push((sample.ts, bits)),
                None => out.push((sample.series.name.clone(), vec![(sample.ts, bits)])),
            }
        }
        out
    }

    /// Equality that treats NaN as equal to NaN.
    fn same<T: Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    /// Reads `bytes` as a record and checks the answer: a well-formed record that re-encodes (in
    /// both encodings) and reads back the same, or a typed refusal.
    fn reads_or_refuses(bytes: &[u8]) -> TestCaseResult {
        let record = match bounded(bytes.len(), || weir_record::read(bytes))? {
            Ok(record) => record,
            Err(refusal) => {
                prop_assert!(!refusal.to_string().is_empty());
                return Ok(());
            }
        };
        let (series, series_idx, ts, values) = record.batch.clone().into_columns();
        if let Err(broken) = Batch::from_columns(series, series_idx, ts, values) {
            return Err(TestCaseError::fail(format!("record's batch breaks the batch invariant: {broken}")));
        }
        // Two series blocks of one name merge into one series, whose consecutive readings may
        // then be further apart than the encoder can write: a typed refusal, nothing else.
        let Ok(cbor) = weir_record::write(Encoding::Cbor, &record) else {
            return Ok(());
        };
        let again = weir_record::read(&cbor).map_err(|e| TestCaseError::fail(format!("re-encoded record: {e}")))?;
        prop_assert_eq!(&again.header, &record.header);
        prop_assert_eq!(again.batch.series(), record.batch.series());
        prop_assert_eq!(per_series(&again.batch, false), per_series(&record.batch, false));
        prop_assert!(same(&again.aggregates, &record.aggregates), "aggregates changed by a round trip");
        prop_assert_eq!(&again.coarsened, &record.coarsened);
        prop_assert_eq!(&again.dropped, &record.dropped);
        // Window statistics of empty windows are not written, so the windows read back are the
        // fixed point: another round trip keeps them.
        let third = weir_record::write(Encoding::Cbor, &again)
            .map_err(|e| TestCaseError::fail(format!("a record read back cannot be encoded: {e}")))?;
        let third = weir_record::read(&third).map_err(|e| TestCaseError::fail(format!("third round: {e}")))?;
        prop_assert!(same(&third.windows, &again.windows), "windows not stable across round trips");
        prop_assert_eq!(again.windows.len(), record.windows.len());

        let json = weir_record::write(Encoding::Json, &record)
            .map_err(|e| TestCaseError::fail(format!("encodes as CBOR but not JSON: {e}")))?;
        let from_json = weir_record::read(&json).map_err(|e| TestCaseError::fail(format!("JSON read back: {e}")))?;
        prop_assert_eq!(&from_json.header, &record.header);
        prop_assert_eq!(per_series(&from_json.batch, true), per_series(&record.batch, true));
        prop_assert_eq!(&from_json.coarsened, &record.coarsened);
        prop_assert_eq!(&from_json.dropped, &record.dropped);
        Ok(())
    }

    fn nanos() -> impl Strategy<Value = Nanos> {
        prop_oneof![
            -4_000_000_000_000_000_000i64..4_000_000_000_000_000_000,
            (0i64..1_000).prop_map(|s| 1_700_000_000_000_000_000 + s * 1_000_000_000),
        ]
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (-1000i32..1000).prop_map(|v| f64::from(v) / 4.0),
            Just(f64::NAN),
            Just(f64::INFINITY)
        ]
    }

    fn series() -> impl Strategy<Value = Series> {
        (
            prop::sample::select(vec!["a", "b/c", "plant1/boiler/temp", "", "é"]),
            prop::option::of(Just("Cel")),
            prop::collection::vec(("[a-z]{1,4}", "[a-z]{0,4}"), 0..2),
        )
            .prop_map(|(name, unit, tags)| Series {
                name: name.to_owned(),
                unit: unit.map(str::to_owned),
                tags,
            })
    }

    fn batch() -> impl Strategy<Value = Batch> {
        prop::collection::vec((series(), nanos(), value()), 0..40).prop_map(|readings| {
            let mut builder = BatchBuilder::new();
            for (series, ts, value) in readings {
                let index = builder.intern(&series);
                builder.push(index, ts, value);
            }
            builder.finish()
        })
    }

    fn stats(start: Nanos) -> impl Strategy<Value = Window> {
        (0u64..5, value(), value(), value(), value()).prop_map(move |(count, sum, min, max, m2)| Window {
            start,
            count,
            sum,
            min,
            max,
            m2,
        })
    }

    fn aggregate() -> impl Strategy<Value = AggregateSeries> {
        (series(), 1u64..3_600_000_000_000, -1_000_000i64..1_000_000, prop::collection::vec(0u64..5, 1..6))
            .prop_flat_map(|(series, width, first, steps)| {
                let mut starts = Vec::new();
                let mut index = first;
                for step in steps {
                    index += step as i64;
                    starts.push(index * width as i64);
                }
                let windows: Vec<_> = starts.into_iter().map(stats).collect();
                (Just(series), Just(width), windows)
            })
            .prop_map(|(series, width, windows)| AggregateSeries { series, width, windows })
    }

    fn window_value() -> impl Strategy<Value = WindowValue> {
        let timed = || prop::option::of((nanos(), value()).prop_map(|(ts, value)| TimedValue { ts, value }));
        let custom = prop::option::of(
            (
                prop::option::of(prop::collection::vec(("[a-z]{1,3}", value()), 0..3)),
                prop::collection::vec(any::<u8>(), 0..6),
                any::<u64>(),
            )
                .prop_map(|(values, partial, missing)| CustomWindow { values, partial, missing }),
        );
        let sketch = prop_oneof![
            Just(Sketch::None),
            prop::collection::vec(any::<u8>(), 1..8).prop_map(Sketch::Protobuf),
            prop::collection::vec(any::<u8>(), 1..8).prop_map(Sketch::JavaBinary),
        ];
        (nanos(), nanos(), any::<u32>(), timed(), timed(), sketch, custom)
            .prop_flat_map(|(key, start, revision, first, last, sketch, custom)| {
                (stats(start), Just((key, start, revision, first, last, sketch, custom)))
            })
            .prop_map(|(stats, (key, start, revision, first, last, sketch, custom))| WindowValue {
                key,
                start,
                end: start.saturating_add(60_000_000_000),
                revision,
                stats,
                first,
                last,
                sketch,
                custom,
            })
    }

    fn span() -> impl Strategy<Value = Span> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), prop::option::of(nanos()), prop::option::of(nanos()))
            .prop_map(|(first_seq, last_seq, records, readings, earliest, latest)| Span {
                first_seq,
                last_seq,
                records,
                readings,
                earliest,
                latest,
                first_encoded_at: 1_700_000_000_000_000_000,
            })
    }

    /// Records as the pipeline and the outbox write them.
    fn record() -> impl Strategy<Value = Record> {
        let header = ("[a-z0-9-]{1,8}", "[a-z0-9_]{1,8}", any::<u64>(), any::<i64>())
            .prop_map(|(gateway, stream, seq, encoded_at)| RecordHeader { gateway, stream, seq, encoded_at });
        (
            header,
            batch(),
            prop::collection::vec(aggregate(), 0..3),
            prop::collection::vec(
                (series(), prop::collection::vec(window_value(), 0..4))
                    .prop_map(|(series, windows)| WindowSeries { series, windows }),
                0..3,
            ),
            prop::option::weighted(0.2, (span(), 1u64..u64::MAX).prop_map(|(span, width)| Coarsened { span, width })),
            prop::option::weighted(0.2, span()),
        )
            .prop_map(|(header, batch, aggregates, windows, coarsened, dropped)| Record {
                header,
                batch,
                aggregates,
                windows,
                coarsened,
                dropped,
            })
    }

    /// Keys of a record's envelope and of its blocks.
    fn record_keys() -> Vec<Item> {
        (0..=16).map(Item::int).collect()
    }

    /// Values shaped like a record's envelope, blocks and spans, with parts left arbitrary.
    fn record_shaped() -> impl Strategy<Value = Item> {
        let any_item = || cbor::nested(record_keys());
        let ints = || {
            prop::collection::vec(cbor::interesting_u64().prop_map(Item::Unsigned), 0..6).prop_map(Item::array).boxed()
        };
        let floats = || prop::collection::vec(cbor::leaf(), 0..6).prop_map(Item::array).boxed();
        let series_block = (cbor::text(), cbor::interesting_u64(), ints(), floats(), prop::option::of(cbor::text()))
            .prop_map(|(name, tick, dt, values, unit)| {
                Item::array(vec![
                    Item::Text(name),
                    unit.map_or(Item::Simple(22), Item::Text),
                    Item::map(Vec::new()),
                    Item::Unsigned(1_700_000_000_000_000_000),
                    Item::Unsigned(tick),
                    dt,
                    values,
                ])
            });
        let columns = prop::collection::vec((prop::sample::select(record_keys()), prop_oneof![ints(), floats()]), 0..8)
            .prop_map(Item::map)
            .boxed();
        let window_block = (cbor::text(), columns.clone()).prop_map(|(name, columns)| {
            Item::array(vec![Item::Text(name), Item::Simple(22), Item::map(Vec::new()), columns])
        });
        let aggregate_block =
            (cbor::text(), cbor::interesting_u64(), ints(), columns).prop_map(|(name, width, dstart, columns)| {
                Item::array(vec![
                    Item::Text(name),
                    Item::Simple(22),
                    Item::map(Vec::new()),
                    Item::Unsigned(width),
                    Item::Negative(5),
                    dstart,
                    columns,
                ])
            });
        let span = prop::collection::vec((prop::sample::select(record_keys()), cbor::leaf()), 0..9)
            .prop_map(Item::map)
            .boxed();
        let entry = prop_oneof![
            (Just(Item::int(0)), prop_oneof![Just(Item::Unsigned(1)), any_item()]),
            (Just(Item::int(1)), cbor::text().prop_map(Item::Text)),
            (Just(Item::int(2)), cbor::text().prop_map(Item::Text)),
            (Just(Item::int(3)), cbor::interesting_u64().prop_map(Item::Unsigned)),
            (Just(Item::int(4)), cbor::interesting_u64().prop_map(Item::Negative)),
            (Just(Item::int(5)), prop::collection::vec(series_block, 0..3).prop_map(Item::array)),
            (Just(Item::int(6)), prop::collection::vec(aggregate_block, 0..3).prop_map(Item::array)),
            (Just(Item::int(7)), span.clone()),
            (Just(Item::int(8)), span),
            (Just(Item::int(9)), prop::collection::vec(window_block, 0..3).prop_map(Item::array)),
            (prop::sample::select(record_keys()), any_item()),
        ];
        let base = [
            (Item::int(0), Item::Unsigned(1)),
            (Item::int(1), Item::text("gw")),
            (Item::int(2), Item::text("s")),
            (Item::int(3), Item::Unsigned(1)),
            (Item::int(4), Item::Unsigned(0)),
            (Item::int(5), Item::array(Vec::new())),
        ];
        prop::collection::vec(entry, 0..6).prop_map(move |extra| Item::map(base.iter().cloned().chain(extra).collect()))
    }

    fn encoded(encoding: Encoding) -> impl Strategy<Value = Vec<u8>> {
        record().prop_map(move |record| {
            weir_record::write(encoding, &record).expect("generated times are within ±4e18 ns of each other")
        })
    }

    fn seeds(encoding: Encoding) -> Vec<Vec<u8>> {
        let mut runner = TestRunner::deterministic();
        let strategy = encoded(encoding);
        (0..8).map(|_| strategy.new_tree(&mut runner).expect("record strategies never reject").current()).collect()
    }

    #[test]
    fn record_reader_cbor() {
        let base = prop_oneof![
            3 => encoded(Encoding::Cbor),
            2 => record_shaped().prop_map(|item| item.to_cbor()),
            1 => cbor::nested(record_keys()).prop_map(|item| item.to_cbor()),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ];
        let input = mutate::mutated(base, mutate::CBOR_TOKENS, seeds(Encoding::Cbor));
        fuzz("records::record_reader_cbor", input, |bytes| reads_or_refuses(&bytes));
    }

    #[test]
    fn record_reader_json() {
        let base = prop_oneof![
            3 => encoded(Encoding::Json),
            1 => record_shaped().prop_map(|item| item.to_json()),
        ];
        let input = mutate::mutated(base, mutate::JSON_TOKENS, seeds(Encoding::Json));
        fuzz("records::record_reader_json", input, |bytes| reads_or_refuses(&bytes));
    }

    fn dead_letter() -> impl Strategy<Value = DeadLetter> {
        let content = prop_oneof![
            ("[a-z/]{0,12}", prop::collection::vec(any::<u8>(), 0..64), any::<i64>(), prop::option::of(any::<u64>()))
                .prop_map(|(topic, payload, received_at, size)| DeadLetterContent::Message {
                    topic,
                    payload,
                    received_at,
                    size
                }),
            (encoded(Encoding::Cbor), any::<u64>())
                .prop_map(|(record, readings)| DeadLetterContent::Batch { record, readings }),
        ];
        (
            "[a-z]{1,8}",
            "decode|encode|source|window|window aggregate|sink [a-z]{1,8}|operator [a-z]{1,8}|[a-z ]{0,12}",
            cbor::text(),
            any::<i64>(),
            content,
            prop::option::of("[a-z-]{1,8}@[0-9a-f]{8}"),
        )
            .prop_map(|(pipeline, stage, reason, at, content, function)| DeadLetter {
                pipeline,
                stage: DeadLetterStage::from_text(&stage),
                reason,
                at,
                content,
                function,
            })
    }

    #[test]
    fn dead_letter_reader() {
        let mut runner = TestRunner::deterministic();
        let others: Vec<Vec<u8>> =
            (0..8).map(|_| dead_letter().new_tree(&mut runner).expect("never rejects").current().to_bytes()).collect();
        let base = prop_oneof![
            4 => dead_letter().prop_map(|letter| letter.to_bytes()),
            1 => cbor::nested((0..=6).map(Item::int).collect()).prop_map(|item| item.to_cbor()),
        ];
        let input = mutate::mutated(base, mutate::CBOR_TOKENS, others);
        fuzz("records::dead_letter_reader", input, |bytes| {
            match bounded(bytes.len(), || DeadLetter::from_bytes(&bytes))? {
                Ok(letter) => {
                    let again = DeadLetter::from_bytes(&letter.to_bytes())
                        .map_err(|e| TestCaseError::fail(format!("a dead letter read back does not read: {e}")))?;
                    prop_assert_eq!(again, letter);
                }
                Err(refusal) => prop_assert!(
                    matches!(refusal, crate::state::StoreError::Unreadable { .. }),
                    "unexpected refusal {refusal:?}"
                ),
            }
            Ok(())
        });
    }
}

/// The configuration parser.
mod config {
    use std::path::Path;

    use super::*;
    use crate::config::{self, ConfigError, DEFAULT_CONFIG, Overrides};

    /// Component files the seed configurations name.
    const COMPONENTS: [&str; 7] = [
        "threshold.wasm",
        "convert.wasm",
        "frames.wasm",
        "weir_fn_threshold_alert.wasm",
        "weir_fn_unit_convert.wasm",
        "weir_fn_moving_average.wasm",
        "weir_fn_frame_decoder.wasm",
    ];

    /// A change to a configuration's text.
    #[derive(Clone, Debug)]
    enum Edit {
        DeleteLine(Index),
        /// Copy a line (a table header: a duplicate table) to another place.
        CopyLine(Index, Index),
        SwapLines(Index, Index),
        /// Replace the value of a `key = value` line.
        SetValue(Index, String),
        InsertLine(Index, String),
        /// Insert text at a character position.
        InsertText(Index, String),
        /// Nest: a key whose value opens this many arrays or inline tables.
        Nest(Index, bool, usize),
        /// A byte-level mutation (the result read as lossy UTF-8).
        Bytes(mutate::Mutation),
    }

    fn apply(text: &str, edits: &[Edit]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for edit in edits {
            let len = lines.len();
            match edit {
                Edit::DeleteLine(i) if len > 0 => {
                    lines.remove(i.index(len));
                }
                Edit::CopyLine(from, to) if len > 0 => {
                    let line = lines[from.index(len)].clone();
                    lines.insert(to.index(len + 1), line);
                }
                Edit::SwapLines(a, b) if len > 0 => lines.swap(a.index(len), b.index(len)),
                Edit::SetValue(i, value) if len > 0 => {
                    let line = &mut lines[i.index(len)];
                    if let Some(eq) = line.find(" = ") {
                        line.truncate(eq + 3);
                        line.push_str(value);
                    }
                }
                Edit::DeleteLine(_) | Edit::CopyLine(..) | Edit::SwapLines(..) | Edit::SetValue(..) => {}
                Edit::InsertLine(i, line) => lines.insert(i.index(len + 1), line.clone()),
                Edit::InsertText(i, inserted) => {
                    let joined = lines.join("\n");
                    let boundaries: Vec<usize> =
                        joined.char_indices().map(|(b, _)| b).chain(std::iter::once(joined.len())).collect();
                    let at = boundaries[i.index(boundaries.len())];
                    let edited = format!("{}{inserted}{}", &joined[..at], &joined[at..]);
                    lines = edited.lines().map(str::to_owned).collect();
                }
                Edit::Nest(i, table, depth) => {
                    let (open, close) = if *table { ("{ a = ", " }") } else { ("[", "]") };
                    lines
                        .insert(i.index(len + 1), format!("nested = {}1{}", open.repeat(*depth), close.repeat(*depth)));
                }
                Edit::Bytes(mutation) => {
                    let bytes = mutate::apply(lines.join("\n").into_bytes(), std::slice::from_ref(mutation));
                    lines = String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect();
                }
            }
        }
        lines.join("\n")
    }

    /// Values that test bounds, types and syntax.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "", "0", "-1", "1", "2", "3", "1.5", "-0.0", "1e999", "nan", "-inf", "+inf", "true",
                "18446744073709551616", "9223372036854775807", "-9223372036854775808", "4294967296",
                "\"\"", "\"x\"", "\"é🦀\u{202e}\"", "\"\\u0000\"", "[]", "{}", "[1, \"a\"]", "{ a = 1 }",
                "1979-05-27T07:32:00Z", "\"0s\"", "\"1ns\"", "\"100y\"", "\"99999999999999999999s\"",
                "\"18446744073709551615B\"", "\"17179869184GiB\"", "\"16EiB\"", "\"1 KiB\"", "\"64MiB\"",
                "\"1KiB/s\"", "\"0B/s\"", "\"mqtt://u:secret@h:1\"", "\"nats://[::1]:99999\"", "\"mqtt://h:0\"",
                "\"tls://h\"", "\"/\"", "\"#\"", "\"+/#/+\"", "\"a/#/b\"", "\"json\"", "\"cbor\"",
                "\"senml_json\"", "\"senml_cbor\"", "\"sliding\"", "\"session\"", "\"tumbling\"",
                "\"drop_oldest\"", "\"reaggregate\"", "\"block\"", "\"lttb\"", "\"deadband\"", "\"plant\"",
                "\"central\"", "\"threshold-alert\"", "\"weir_fn_unit_convert.wasm\"", "\"../../etc/passwd\"",
            ])
            .prop_map(str::to_owned),
            1 => "\\PC{0,16}".prop_map(|s| format!("{s:?}")),
            1 => (1usize..70_000).prop_map(|n| format!("\"{}\"", "a".repeat(n))),
            1 => any::<i64>().prop_map(|n| n.to_string()),
        ]
    }

    /// Lines worth inserting: tables, keys, odd syntax.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "[gateway]", "[state]", "[brokers.plant]", "[brokers.extra]", "url = \"mqtt://127.0.0.1:1883\"",
                "[functions.threshold-alert]", "[functions.x]", "component = \"threshold.wasm\"",
                "[pipelines.boiler]", "[pipelines.p2.source.simulated]", "[pipelines.p2.sink.console]",
                "[pipelines.p2.decode.cbor]", "[pipelines.boiler.window]", "[pipelines.boiler.window.aggregate]",
                "[pipelines.boiler.downsample]", "[pipelines.boiler.outbox]", "[[pipelines.boiler.operators]]",
                "[[pipelines.boiler]]", "decode = \"senml_cbor\"", "decode = { raw = { encoding = \"f32_be\" } }",
                "function = \"unit-convert\"", "name = \"second\"", "params = { a = [1, { b = nan }] }",
                "kind = \"session\"", "gap = \"5s\"", "method = \"lttb\"", "points = 2", "window = \"1m\"",
                "when_full = \"block\"", "drain = \"backlog_first\"", "client_id = \"weir-plant1-gw07-boiler\"",
                "memory = \"1TiB\"", "timeout = \"0s\"", "fuel = 0", "a.b.c = 1", "\"quoted key\" = 1",
                "x = '''", "x = \"\"\"", "[", "]]", "= 1", "#", "\u{feff}", "\r", "\t[gateway]",
            ])
            .prop_map(str::to_owned),
            1 => ("[a-z_.]{1,12}", value()).prop_map(|(key, value)| format!("{key} = {value}")),
        ]
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let seeds: Vec<Vec<u8>> = seeds().into_iter().map(String::into_bytes).collect();
        let unicode = prop_oneof![
            prop::sample::select(vec![
                "é", "🦀", "\u{0}", "\u{202e}", "\u{fffe}", "\u{feff}", "\"", "'", "\\", "\n", "=", "[", "]"
            ])
            .prop_map(str::to_owned),
            "\\PC{1,6}",
        ];
        prop_oneof![
            3 => any::<Index>().prop_map(Edit::DeleteLine),
            2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::CopyLine(a, b)),
            1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
            5 => (any::<Index>(), value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
            3 => (any::<Index>(), line()).prop_map(|(i, l)| Edit::InsertLine(i, l)),
            2 => (any::<Index>(), unicode).prop_map(|(i, t)| Edit::InsertText(i, t)),
            1 => (any::<Index>(), any::<bool>(), prop_oneof![1usize..100, 100usize..5_000])
                .prop_map(|(i, table, depth)| Edit::Nest(i, table, depth)),
            2 => mutate::mutation(mutate::JSON_TOKENS, seeds).prop_map(Edit::Bytes),
        ]
    }

    /// Valid configurations: the built-in default, the tests' full configuration, and that one
    /// with the documentation's examples and the other kinds of each part.
    fn seeds() -> Vec<String> {
        let full = config::tests::VALID;
        let more = r#"
[pipelines.env]
decode = "senml_cbor"
[pipelines.env.source.nats]
broker = "central"
subjects = ["env.>"]
[pipelines.env.sink.mqtt]
broker = "plant"
topic = "weir/env"
client_id = "env-sink"

[pipelines.raw]
decode = { raw = { encoding = "f64_le" } }
[pipelines.raw.source.simulated]
payload = "json"
devices = 2
interval = "1s"
topic_prefix = "raw"
seed = 3
[pipelines.raw.window]
kind = "tumbling"
width = "1m"
[pipelines.raw.window.aggregate]
function = "threshold-alert"
[pipelines.raw.sink.console]
"#;
        vec![DEFAULT_CONFIG.to_owned(), full.to_owned(), format!("{full}{more}")]
    }

    fn parses_or_refuses(text: &str, functions: &Path) -> TestCaseResult {
        let overrides = Overrides { data_dir: None, functions_dir: Some(functions.to_owned()) };
        let result = bounded(text.len(), || config::parse("weir.toml", text, Path::new("/etc/weir"), &overrides))?;
        match &result {
            Ok(config) => prop_assert!(!config.pipelines.is_empty(), "a configuration without pipelines"),
            Err(error @ ConfigError::Invalid { problems, .. }) => {
                prop_assert!(!problems.is_empty(), "a refusal without a problem");
                let lines = text.split('\n').count();
                for problem in problems {
                    prop_assert!(problem.line <= lines, "line {} of a {lines}-line file", problem.line);
                    prop_assert!(problem.line == 0 || problem.column > 0);
                }
                let shown = error.to_string();
                prop_assert!(shown.starts_with("error: weir.toml"), "{shown}");
                // The one password of the seeds, when it is still in a URL, is never printed.
                if text.matches("secret").count() == 1 && text.contains("mqtt://u:secret@h:1") {
                    prop_assert!(!shown.contains("secret"), "a password printed: {shown}");
                }
            }
            Err(other) => return Err(TestCaseError::fail(format!("not a refusal of the text: {other}"))),
        }
        Ok(())
    }

    /// The parser over mutated valid configurations.
    #[test]
    fn config_parser() {
        let functions = tempfile::tempdir().expect("temp dir");
        for name in COMPONENTS {
            std::fs::write(functions.path().join(name), b"").expect("write placeholder");
        }
        let input = (prop::sample::select(seeds()), prop::collection::vec(edit(), 0..6))
            .prop_map(|(seed, edits)| apply(&seed, &edits));
        fuzz("config::config_parser", input, |text| parses_or_refuses(&text, functions.path()));
    }
}
