//! The commands' reads and writes of the fleet's documents: the next revision of a desired
//! document (its current contents carried over, written only if nobody wrote in between),
//! finding a published target by its version, the highest counter published for a function,
//! and signing a published release again with a higher counter (how a fleet goes back to an
//! earlier release above the gateways' floors).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use weir_fleet::{Desired, FunctionTarget, HealthGates, RolloutTag, Scope, Signed, SigningKey, Target};
use weir_host::fleet::central::{self, Central};
use weir_host::fleet::rollout::Release;

/// What the next revision of a document changes.
#[derive(Debug, Default)]
pub struct Edit {
    /// Functions to run (name → entry).
    pub set: BTreeMap<String, FunctionTarget>,
    /// Functions to take out (they run their configured components again).
    pub remove: Vec<String>,
    /// Floors to raise once committed.
    pub floors: BTreeMap<String, u64>,
    /// New health gates (else the current document's).
    pub health: Option<HealthGates>,
    /// The rollout writing it, if one is.
    pub rollout: Option<RolloutTag>,
}

/// Writes the next revision of `scope`'s desired document, expiring at `expires`: the current
/// one's functions, floors and gates with `edit` applied. Fails if someone else wrote the
/// document meanwhile.
pub async fn write_next(
    central: &Central,
    scope: &Scope,
    keys: &[SigningKey],
    expires: u64,
    edit: Edit,
) -> anyhow::Result<Desired> {
    let key = central::desired_key(scope);
    let (current, bucket_revision) = match current(central, scope).await? {
        Some((document, bucket_revision)) => (Some(document), bucket_revision),
        None => (None, 0),
    };
    let (mut functions, mut floors, health, revision) = match current {
        Some(d) => (d.functions, d.floors, d.health, d.revision),
        None => (BTreeMap::new(), BTreeMap::new(), HealthGates::default(), 0),
    };
    for function in &edit.remove {
        if functions.remove(function).is_none() {
            bail!("{function} is not in {key}");
        }
    }
    functions.extend(edit.set);
    for (function, counter) in edit.floors {
        let floor = floors.entry(function).or_insert(0);
        *floor = (*floor).max(counter);
    }
    // A floor above the document's own version of a function could never be committed.
    floors.retain(|function, floor| functions.get(function).is_none_or(|entry| entry.counter >= *floor));
    let desired = Desired {
        scope: scope.clone(),
        revision: revision + 1,
        expires,
        functions,
        floors,
        health: edit.health.unwrap_or(health),
        rollout: edit.rollout,
    };
    let signed = Signed::sign(&desired, &keys.iter().collect::<Vec<_>>());
    central.replace_document(&key, signed.to_bytes(), bucket_revision).await?;
    Ok(desired)
}

/// `scope`'s desired document now (decoded to be edited; gateways verify it) and its revision
/// in the bucket.
pub async fn current(central: &Central, scope: &Scope) -> anyhow::Result<Option<(Desired, u64)>> {
    let key = central::desired_key(scope);
    let Some((bytes, bucket_revision)) = central.document(&key).await? else { return Ok(None) };
    let signed = Signed::from_bytes(&bytes)?;
    let document: Desired = minicbor::decode(&signed.body).with_context(|| format!("{key} does not decode"))?;
    Ok(Some((document, bucket_revision)))
}

/// Every published target of `function`, with its key.
async fn targets(central: &Central, function: &str) -> anyhow::Result<Vec<(String, Target)>> {
    let mut found = Vec::new();
    for key in central.document_keys(&format!("target.{function}.")).await? {
        let Some((bytes, _)) = central.document(&key).await? else { continue };
        let signed = Signed::from_bytes(&bytes)?;
        let target: Target = minicbor::decode(&signed.body).with_context(|| format!("{key} does not decode"))?;
        found.push((key, target));
    }
    Ok(found)
}

/// The published target of `function` labelled `version`, with the highest counter if it was
/// published more than once.
pub async fn find_target(central: &Central, function: &str, version: &str) -> anyhow::Result<Target> {
    targets(central, function)
        .await?
        .into_iter()
        .map(|(_, target)| target)
        .filter(|target| target.version == version)
        .max_by_key(|target| target.counter)
        .with_context(|| format!("no published target of {function} is labelled {version}"))
}

/// The highest security counter published for `function` (0: none).
pub async fn highest_counter(central: &Central, function: &str) -> anyhow::Result<u64> {
    Ok(targets(central, function).await?.iter().map(|(_, t)| t.counter).max().unwrap_or(0))
}

/// Signs the published `release` of `function` again with a counter above every one published,
/// and publishes it (its component is already stored); returns the new entry.
pub async fn republish(
    central: &Central,
    function: &str,
    release: &Release,
    keys: &[SigningKey],
) -> anyhow::Result<FunctionTarget> {
    let entry = release.entry().with_context(|| format!("the release of {function} is unreadable"))?;
    let old = targets(central, function)
        .await?
        .into_iter()
        .map(|(_, target)| target)
        .find(|target| target.sha256 == entry.sha256)
        .with_context(|| format!("{function} {} was never published", release.version))?;
    let target = Target { counter: highest_counter(central, function).await? + 1, ..old };
    let signed = Signed::sign(&target, &keys.iter().collect::<Vec<_>>());
    central.put_document(&central::target_key(function, target.counter, &target.sha256), signed.to_bytes()).await?;
    Ok(target.entry())
}
