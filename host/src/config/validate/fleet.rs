//! `[fleet]`: a NATS broker for the fleet's buckets, the trusted root — read, and checked to be a
//! root its own root keys signed — the groups, the heartbeat.

use std::collections::BTreeMap;

use toml::Spanned;

use super::Validator;
use crate::config::defaults;
use crate::config::raw::RawFleet;
use crate::config::types::DurationIn;
use crate::config::{BrokerConfig, ClockSynced, FleetConfig, Name, Protocol};

impl Validator<'_> {
    /// The fleet settings, or `None` when a problem was reported.
    pub(super) fn fleet(&mut self, raw: RawFleet, brokers: &BTreeMap<Name, BrokerConfig>) -> Option<FleetConfig> {
        let broker = self.broker_ref(&raw.broker, "fleet.broker", Protocol::Nats, brokers);
        let root = self.fleet_root(&raw.root);
        let mut groups: Vec<Name> = Vec::new();
        for group in raw.groups {
            if groups.contains(group.get_ref()) {
                self.problem(
                    Some(group.span()),
                    "fleet.groups",
                    format!("group {:?} is listed twice", group.get_ref().as_str()),
                );
            } else {
                groups.push(group.into_inner());
            }
        }
        let clock_synced = match raw.clock_synced {
            None => ClockSynced::Kernel,
            Some(value) => match value.get_ref().as_str() {
                "kernel" => ClockSynced::Kernel,
                "always" => ClockSynced::Always,
                path if path.starts_with('/') => ClockSynced::WhenFileExists(path.into()),
                other => {
                    self.problem(
                        Some(value.span()),
                        "fleet.clock_synced",
                        format!("{other:?} is none of \"kernel\", \"always\" or the absolute path of a file"),
                    );
                    ClockSynced::Kernel
                }
            },
        };
        Some(FleetConfig {
            broker: broker?,
            root_path: self.resolve(raw.root.get_ref()),
            root: root?,
            groups,
            heartbeat: raw.heartbeat.map_or(defaults::FLEET_HEARTBEAT, DurationIn::get),
            clock_synced,
        })
    }

    /// The root file, checked to be a root that satisfies its own root role.
    fn fleet_root(&mut self, file: &Spanned<std::path::PathBuf>) -> Option<weir_fleet::Signed> {
        let bytes = self.read_bytes(file, "fleet.root")?;
        let shown = file.get_ref().display();
        let checked = weir_fleet::Signed::from_bytes(&bytes)
            .and_then(|signed| weir_fleet::TrustedRoot::install(&signed).map(|_| signed));
        match checked {
            Ok(signed) => Some(signed),
            Err(refusal) => {
                self.problem(Some(file.span()), "fleet.root", format!("{shown} is not a usable fleet root: {refusal}"));
                None
            }
        }
    }
}
