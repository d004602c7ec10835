//! A GPIO line read as a digital input: a door contact, a float switch, a relay's feedback. Each
//! sample reads the line's level once: `state` is 1 when it is active (high, or low with
//! `active_low`), 0 otherwise. Polled at the device's interval: a pulse shorter than that can
//! pass unseen.
//!
//! `init` (again) requests the line from the kernel, releasing the handle it held first, so a
//! line another program held, or a chip that went away and came back, is taken up again.

use std::fmt::{self, Display};

use embedded_hal::digital::InputPin;

use super::{Quantity, Sensor};
use crate::source::sensors::health::{Fault, FaultKind};

/// A digital input on the line `request` gives.
pub struct DigitalInput<R, P> {
    request: R,
    pin: Option<P>,
    active_low: bool,
}

impl<R, P> DigitalInput<R, P>
where
    R: FnMut() -> Result<P, Fault>,
{
    /// The input on the line `request` asks the kernel for, active low or high.
    pub fn new(request: R, active_low: bool) -> Self {
        Self { request, pin: None, active_low }
    }
}

impl<R, P> fmt::Debug for DigitalInput<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalInput").field("requested", &self.pin.is_some()).finish()
    }
}

impl<R, P> Sensor for DigitalInput<R, P>
where
    R: FnMut() -> Result<P, Fault>,
    P: InputPin,
    P::Error: Display,
{
    fn init(&mut self) -> Result<(), Fault> {
        self.pin = None;
        self.pin = Some((self.request)()?);
        Ok(())
    }

    fn measure(&mut self) -> Result<Vec<Quantity>, Fault> {
        let pin = self.pin.as_mut().ok_or_else(|| Fault::new(FaultKind::Io, "the line is not requested"))?;
        let high = pin.is_high().map_err(|e| Fault::new(FaultKind::Io, e.to_string()))?;
        let active = high != self.active_low;
        Ok(vec![Quantity { name: "state", unit: "1", value: if active { 1.0 } else { 0.0 } }])
    }
}
