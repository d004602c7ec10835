//! The rules a gateway accepts a verified desired document and its targets by.
//!
//! [`check_desired`] takes a desired document whose signatures already verified
//! ([`crate::Signed::verify`]) and what the gateway knows: who it is, the document it holds for
//! that scope, its anti-rollback floors and its clock. [`check_target`] pairs a verified target
//! with the desired document's entry for it.
//!
//! **Clocks.** Gateways often boot without a real-time clock. Until the clock is synced
//! ([`Clock::NotSynced`]) expiry cannot be checked, so a gateway keeps running the document it
//! holds and accepts no newer revision ([`Refusal::ClockNotSynced`], which clears by itself once
//! the clock is synced); it never refuses what it already runs for that reason.
//!
//! **Floors.** A function's floor is the highest security counter of a version this gateway has
//! committed (or a desired document's `floors` asked for, once committed). It is raised only at
//! commit, never when a version is installed, so an automatic rollback to the last committed
//! version is never refused by the gateway's own floor.

use std::collections::BTreeMap;

use crate::document::{Desired, FunctionTarget, Scope, Target};
use crate::envelope::{TrustedRoot, canonical};
use crate::refusal::Refusal;

/// Who the gateway is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayIdentity {
    /// Its `[gateway] id`.
    pub id: String,
    /// The groups it is in (`[fleet] groups`).
    pub groups: Vec<String>,
}

impl GatewayIdentity {
    /// Whether a document for `scope` is for this gateway.
    pub fn is_in(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Gateway(id) => *id == self.id,
            Scope::Group(group) => self.groups.iter().any(|g| g == group),
        }
    }
}

/// The gateway's wall clock as far as it can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Synced (NTP or a real-time clock): seconds since the Unix epoch.
    Synced(u64),
    /// Not synced since boot: its time says nothing.
    NotSynced,
}

/// The gateway's anti-rollback floors: per function, the lowest security counter it accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Floors(pub BTreeMap<String, u64>);

impl Floors {
    /// The floor for `function` (0 when none was ever raised).
    pub fn of(&self, function: &str) -> u64 {
        self.0.get(function).copied().unwrap_or(0)
    }

    /// Raises floors on commit of a document's `functions`: each function's to at least the
    /// committed version's counter and to what the document's `floors` ask. Never lowers one.
    pub fn raise_on_commit(&mut self, functions: &BTreeMap<String, FunctionTarget>, floors: &BTreeMap<String, u64>) {
        let asked =
            functions.iter().map(|(name, entry)| (name, entry.counter)).chain(floors.iter().map(|(n, c)| (n, *c)));
        for (function, counter) in asked {
            self.raise(function, counter);
        }
    }

    /// Raises `function`'s floor to at least `counter`. Never lowers it.
    pub fn raise(&mut self, function: &str, counter: u64) {
        let floor = self.0.entry(function.to_owned()).or_insert(0);
        *floor = (*floor).max(counter);
    }
}

/// What accepting a document means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A newer revision: fetch, verify and stage what it asks for.
    Newer,
    /// The revision the gateway already holds: nothing to do.
    Held,
}

/// Whether the gateway `me`, holding `held` for the document's scope (if any), with `floors` and
/// `clock`, under the trusted `root`, accepts `document`.
pub fn check_desired(
    document: &Desired,
    me: &GatewayIdentity,
    held: Option<&Desired>,
    floors: &Floors,
    clock: Clock,
    root: &TrustedRoot,
) -> Result<Verdict, Refusal> {
    let root = root.root();
    if !me.is_in(&document.scope) {
        return Err(Refusal::NotForThisGateway { scope: document.scope.clone() });
    }
    well_formed(document)?;
    if let Some(held) = held {
        if document.revision < held.revision {
            return Err(Refusal::RevisionWentBack {
                scope: document.scope.clone(),
                revision: document.revision,
                current: held.revision,
            });
        }
        if document.revision == held.revision {
            // Compared as signed bytes: two documents are the same only if they were signed the same.
            return if canonical(document) == canonical(held) {
                Ok(Verdict::Held)
            } else {
                Err(Refusal::RevisionReused { scope: document.scope.clone(), revision: document.revision })
            };
        }
    }
    match clock {
        Clock::NotSynced => return Err(Refusal::ClockNotSynced { revision: document.revision }),
        Clock::Synced(now) if root.expires <= now => {
            return Err(Refusal::RootExpired { version: root.version, expires: root.expires });
        }
        Clock::Synced(now) if document.expires <= now => {
            return Err(Refusal::Expired { revision: document.revision, expires: document.expires, now });
        }
        Clock::Synced(_) => {}
    }
    for (function, entry) in &document.functions {
        let floor = floors.of(function);
        if entry.counter < floor {
            return Err(Refusal::BelowFloor {
                function: function.clone(),
                version: entry.version.clone(),
                counter: entry.counter,
                floor,
            });
        }
    }
    Ok(Verdict::Newer)
}

/// Refuses settings that cannot hold: a floor above the document's own version of that function
/// (it would be below its own floor once committed), a tolerance that is not a finite
/// non-negative number, a share above one million parts per million.
fn well_formed(document: &Desired) -> Result<(), Refusal> {
    let problem = |problem: String| Err(Refusal::IllFormed { problem });
    for (function, floor) in &document.floors {
        if let Some(entry) = document.functions.get(function)
            && entry.counter < *floor
        {
            return problem(format!(
                "floor {floor} for {function} is above its own version's counter {}",
                entry.counter
            ));
        }
    }
    let health = &document.health;
    if !health.tolerance.is_finite() || health.tolerance < 0.0 {
        return problem(format!("tolerance {} is not a finite non-negative number", health.tolerance));
    }
    for (name, ppm) in [("max_faulted_ppm", health.max_faulted_ppm), ("max_divergent_ppm", health.max_divergent_ppm)] {
        if ppm > 1_000_000 {
            return problem(format!("{name} {ppm} is more than a million parts per million"));
        }
    }
    Ok(())
}

/// Whether the verified `target` is the one the desired document's `entry` for `function` names,
/// and runs on weir `running`.
pub fn check_target(
    function: &str,
    entry: &FunctionTarget,
    target: &Target,
    running: &semver::Version,
) -> Result<(), Refusal> {
    let mismatch = |field| Err(Refusal::TargetMismatch { function: function.to_owned(), field });
    if target.function != function {
        return mismatch("function");
    }
    let theirs = target.entry();
    let differing = [
        ("version", theirs.version != entry.version),
        ("sha256", theirs.sha256 != entry.sha256),
        ("length", theirs.length != entry.length),
        ("world", theirs.world != entry.world),
        ("counter", theirs.counter != entry.counter),
    ];
    if let Some((field, _)) = differing.into_iter().find(|(_, differs)| *differs) {
        return mismatch(field);
    }
    let needs = semver::Version::parse(&target.min_weir)
        .map_err(|error| Refusal::Malformed { what: "target's min_weir", detail: error.to_string() })?;
    if needs > *running {
        return Err(Refusal::NeedsNewerWeir {
            function: function.to_owned(),
            version: target.version.clone(),
            needs: needs.to_string(),
            running: running.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "accept/tests.rs"]
mod tests;
