use std::collections::BTreeMap;

use minicbor::Encoder;

use super::*;
use crate::document::{Desired, Scope};
use crate::testing::{NOW, TestFleet, role};

fn code<T>(result: Result<T, Refusal>) -> &'static str {
    match result {
        Ok(_) => "accepted",
        Err(refusal) => refusal.code(),
    }
}

#[test]
fn a_signed_document_verifies_after_a_trip_through_its_bytes() {
    let fleet = TestFleet::new();
    let target = fleet.target("unit-convert", "1.0.0", b"component", 1);
    let signed = Signed::sign(&target, &[&fleet.target_keys[0]]);
    let again = Signed::from_bytes(&signed.to_bytes()).expect("an envelope reads back");
    assert_eq!(again.verify::<Target>(&fleet.trusted()), Ok(target));
}

#[test]
fn a_signature_by_a_key_the_role_does_not_list_does_not_count() {
    let fleet = TestFleet::new();
    let desired = fleet.desired(Scope::Gateway("gw-1".into()), 1, &[]);
    // A target key is in the root, but not in the desired role.
    let signed = Signed::sign(&desired, &[&fleet.target_keys[0]]);
    let refusal = signed.verify::<Desired>(&fleet.trusted()).expect_err("not the desired role");
    assert!(matches!(refusal, Refusal::TooFewSignatures { valid: 0, unknown: 1, .. }), "{refusal}");
    let stranger = SigningKey::generate().expect("the OS gives random numbers");
    assert_eq!(code(Signed::sign(&desired, &[&stranger]).verify::<Desired>(&fleet.trusted())), "signatures");
}

#[test]
fn a_threshold_counts_distinct_keys() {
    let fleet = TestFleet::new();
    let root = fleet.root.clone();
    let mut signed = Signed::sign(&root, &[&fleet.root_keys[0]]);
    assert_eq!(code(signed.verify::<Root>(&fleet.trusted())), "signatures");
    // The same key's signature twice is one signature.
    let copy = signed.signatures[0].clone();
    signed.signatures.push(copy);
    assert_eq!(code(signed.verify::<Root>(&fleet.trusted())), "signatures");
    signed.add_signature(&fleet.root_keys[1]);
    assert_eq!(code(signed.verify::<Root>(&fleet.trusted())), "accepted");
}

#[test]
fn a_changed_body_no_longer_verifies() {
    let fleet = TestFleet::new();
    let desired = fleet.desired(Scope::Gateway("gw-1".into()), 7, &[]);
    let mut signed = Signed::sign(&desired, &[&fleet.desired_key]);
    let last = signed.body.len() - 1;
    signed.body[last] ^= 1;
    let refusal = signed.verify::<Desired>(&fleet.trusted()).expect_err("tampered");
    assert!(matches!(refusal, Refusal::TooFewSignatures { valid: 0, invalid: 1, .. }), "{refusal}");
}

#[test]
fn a_signature_over_one_kind_never_counts_for_another() {
    let mut fleet = TestFleet::new();
    // One key that signs both targets and desired documents.
    let shared = &fleet.target_keys[0];
    fleet.root.desired = role(&[shared], 1);
    let target = fleet.target("unit-convert", "1.0.0", b"component", 1);
    let mut signed = Signed::sign(&target, &[shared]);
    assert_eq!(code(signed.verify::<Desired>(&fleet.trusted())), "wrong-kind");
    signed.kind = Kind::Desired;
    let refusal = signed.verify::<Desired>(&fleet.trusted()).expect_err("relabelled");
    assert!(matches!(refusal, Refusal::TooFewSignatures { valid: 0, invalid: 1, .. }), "{refusal}");
}

#[test]
fn a_body_in_another_encoding_of_the_same_document_is_refused() {
    let fleet = TestFleet::new();
    let target = fleet.target("unit-convert", "1.0.0", b"component", 1);
    // The same fields with keys 0 and 1 swapped: decodes to the same target.
    let mut body = Vec::new();
    let mut e = Encoder::new(&mut body);
    e.map(7).expect("in memory");
    e.u8(1).expect("in memory").str(&target.version).expect("in memory");
    e.u8(0).expect("in memory").str(&target.function).expect("in memory");
    e.u8(2).expect("in memory").bytes(&target.sha256).expect("in memory");
    e.u8(3).expect("in memory").u64(target.length).expect("in memory");
    e.u8(4).expect("in memory").u32(0).expect("in memory");
    e.u8(5).expect("in memory").u64(target.counter).expect("in memory");
    e.u8(6).expect("in memory").str(&target.min_weir).expect("in memory");
    assert_eq!(minicbor::decode::<Target>(&body).ok(), Some(target));
    let mut signed = Signed { kind: Kind::Target, body, signatures: Vec::new() };
    signed.add_signature(&fleet.target_keys[0]);
    assert_eq!(code(signed.verify::<Target>(&fleet.trusted())), "not-canonical");
}

#[test]
fn an_oversized_envelope_is_refused_before_it_is_decoded() {
    let bytes = vec![0u8; MAX_DOCUMENT_BYTES + 1];
    assert_eq!(code(Signed::from_bytes(&bytes)), "too-large");
    assert_eq!(code(Signed::from_bytes(&[0xff, 0x00])), "malformed");
}

#[test]
fn an_installed_root_must_be_signed_by_its_own_root_threshold() {
    let fleet = TestFleet::new();
    let both = Signed::sign(&fleet.root, &[&fleet.root_keys[0], &fleet.root_keys[1]]);
    assert_eq!(TrustedRoot::install(&both).map(|r| r.root().clone()), Ok(fleet.root.clone()));
    let one = Signed::sign(&fleet.root, &[&fleet.root_keys[0]]);
    assert_eq!(code(TrustedRoot::install(&one)), "signatures");

    let mut unreachable = fleet.root.clone();
    unreachable.targets.threshold = 3;
    let signed = Signed::sign(&unreachable, &[&fleet.root_keys[0], &fleet.root_keys[1]]);
    assert_eq!(code(TrustedRoot::install(&signed)), "bad-role");
    let mut none = fleet.root.clone();
    none.desired.threshold = 0;
    let signed = Signed::sign(&none, &[&fleet.root_keys[0], &fleet.root_keys[1]]);
    assert_eq!(code(TrustedRoot::install(&signed)), "bad-role");
}

#[test]
fn a_new_root_needs_the_old_root_keys_and_its_own() {
    let fleet = TestFleet::new();
    let trusted = TrustedRoot::install(&Signed::sign(&fleet.root, &[&fleet.root_keys[0], &fleet.root_keys[1]]))
        .expect("the first root");
    let new_key = SigningKey::generate().expect("the OS gives random numbers");
    let mut next = fleet.root.clone();
    next.version = 2;
    next.expires = NOW + 730 * 86_400;
    next.keys.insert(new_key.public().id(), new_key.public());
    next.root = role(&[&new_key], 1);

    let by_new_key_only = Signed::sign(&next, &[&new_key]);
    assert_eq!(code(trusted.update(&by_new_key_only)), "signatures");
    let by_old_keys_only = Signed::sign(&next, &[&fleet.root_keys[0], &fleet.root_keys[1]]);
    assert_eq!(code(trusted.update(&by_old_keys_only)), "signatures");
    let by_both = Signed::sign(&next, &[&fleet.root_keys[0], &fleet.root_keys[1], &new_key]);
    let rotated = trusted.update(&by_both).expect("signed by the old threshold and the new one");
    assert_eq!(rotated.root().version, 2);

    // The old root again is not the next one, and neither is one that skips a version.
    let old = Signed::sign(&fleet.root, &[&new_key, &fleet.root_keys[0], &fleet.root_keys[1]]);
    assert_eq!(code(rotated.update(&old)), "root-not-next");
    let mut skipping = next.clone();
    skipping.version = 4;
    assert_eq!(code(rotated.update(&Signed::sign(&skipping, &[&new_key]))), "root-not-next");
    let mut third = next;
    third.version = 3;
    assert_eq!(rotated.update(&Signed::sign(&third, &[&new_key])).map(|r| r.root().version), Ok(3));
}

#[test]
fn a_flood_of_signatures_is_refused_before_any_is_verified() {
    let fleet = TestFleet::new();
    let desired = fleet.desired(Scope::Gateway("gw-1".into()), 1, &[]);
    let mut signed = Signed::sign(&desired, &[&fleet.desired_key]);
    let copy = signed.signatures[0].clone();
    // Copies up to the root's key count are harmless: one key, one vote.
    signed.signatures.resize(fleet.root.keys.len(), copy.clone());
    assert_eq!(code(signed.verify::<Desired>(&fleet.trusted())), "accepted");
    signed.signatures.push(copy);
    assert_eq!(code(signed.verify::<Desired>(&fleet.trusted())), "too-many-signatures");
}

#[test]
fn a_root_listing_a_key_under_another_id_is_refused() {
    let fleet = TestFleet::new();
    let mut root = fleet.root.clone();
    let stranger = SigningKey::generate().expect("the OS gives random numbers");
    let id = fleet.desired_key.public().id();
    root.keys = root
        .keys
        .into_iter()
        .map(|(k, v)| if k == id { (k, stranger.public()) } else { (k, v) })
        .collect::<BTreeMap<_, _>>();
    let signed = Signed::sign(&root, &[&fleet.root_keys[0], &fleet.root_keys[1]]);
    assert_eq!(code(TrustedRoot::install(&signed)), "malformed");
}
