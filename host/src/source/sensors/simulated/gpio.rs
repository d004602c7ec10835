//! A simulated GPIO line: its level changes every `toggle_every` after the bus opened (low
//! first), unless a scripted fault says otherwise.

use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorType, InputPin};

use super::{SimulatedError, active};
use crate::config::{DeviceSimulation, FaultScript, ScriptedFault};
use crate::source::sensors::health::{Fault, FaultKind};

/// A simulated input line.
#[derive(Clone, Debug)]
pub struct SimulatedLine {
    toggle_every: Duration,
    faults: Vec<ScriptedFault>,
    opened: Instant,
    /// The level held while a `stuck` fault lasts.
    held: Option<bool>,
}

impl SimulatedLine {
    /// A line simulated as `simulation` says, its bus opened now.
    pub fn new(simulation: &DeviceSimulation) -> Self {
        Self {
            toggle_every: simulation.toggle_every.max(Duration::from_millis(1)),
            faults: simulation.faults.clone(),
            opened: Instant::now(),
            held: None,
        }
    }

    /// The line, requested as an input; refused while a `remote_io` fault lasts (the chip is
    /// gone, as a GPIO expander on a failing bus is).
    pub fn request(&self) -> Result<Self, Fault> {
        if active(&self.faults, self.opened.elapsed(), FaultScript::RemoteIo).is_some() {
            return Err(Fault::new(FaultKind::Io, SimulatedError::remote_io().to_string()));
        }
        Ok(Self { held: None, ..self.clone() })
    }
}

impl ErrorType for SimulatedLine {
    type Error = SimulatedError;
}

impl InputPin for SimulatedLine {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        let since_open = self.opened.elapsed();
        if let Some(slow) = active(&self.faults, since_open, FaultScript::Slow) {
            std::thread::sleep(slow.delay);
        }
        if active(&self.faults, since_open, FaultScript::RemoteIo).is_some() {
            return Err(SimulatedError::remote_io());
        }
        let level = (since_open.as_nanos() / self.toggle_every.as_nanos()) % 2 == 1;
        if active(&self.faults, since_open, FaultScript::Stuck).is_some() {
            return Ok(*self.held.get_or_insert(level));
        }
        self.held = None;
        Ok(level)
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        self.is_high().map(|high| !high)
    }
}
