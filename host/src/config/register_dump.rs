//! Register maps as `i2cdump` prints them: what a simulated device answers with.
//!
//! Two layouts, told apart by their header line:
//! - byte mode (`i2cdump -y 1 0x76`, header `     0  1  2 … f`): rows `00:` to `f0:` of sixteen
//!   8-bit registers, then an ASCII column that is ignored;
//! - word mode (`i2cdump -y 1 0x48 w`, header `     0,8  1,9 … 7,f`): rows `00:` to `f8:` of eight
//!   16-bit registers, each printed as the SMBus word, low byte first on the wire. (Parts that
//!   send their most significant byte first, such as the ADS1115, therefore show byte-swapped
//!   values: `8385` is the ADS1115's 0x8583.)
//!
//! `XX` marks a register that did not answer; reading it is not acknowledged. Lines before the
//! header (i2cdump's warnings and prompt) and lines starting with `#` are skipped. Registers a
//! file does not list read as `XX` too.
//!
//! Pure: the text comes in, a [`RegisterDump`] or the first line that is wrong comes out.

use std::fmt;

/// How wide each register of a dump is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterWidth {
    /// 8-bit registers, auto-incrementing on multi-byte reads (BME280).
    Byte,
    /// 16-bit registers, one per pointer value (ADS1115, INA219, TMP102).
    Word,
}

/// One device's registers.
#[derive(Clone, PartialEq, Eq)]
pub struct RegisterDump {
    /// Their width.
    pub width: RegisterWidth,
    /// By pointer value: the byte (in the low 8 bits) or the SMBus word; `None` for `XX`.
    pub registers: Vec<Option<u16>>,
}

impl fmt::Debug for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answering = self.registers.iter().filter(|r| r.is_some()).count();
        write!(f, "RegisterDump({:?}, {answering} registers answer)", self.width)
    }
}

/// What is wrong with a dump, and on which line (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DumpError {
    /// The line.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

impl RegisterDump {
    /// Reads `text` as `i2cdump` printed it.
    pub fn parse(text: &str) -> Result<Self, DumpError> {
        let mut width = None;
        let mut registers = vec![None; 256];
        let mut rows = 0;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let error = |message: String| DumpError { line: number, message };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some(width) = width else {
                width = header(trimmed);
                continue;
            };
            let Some((label, rest)) = trimmed.split_once(':') else {
                return Err(error(format!("expected a row such as `00: …`, found {trimmed:?}")));
            };
            let start = u8::from_str_radix(label.trim(), 16)
                .map_err(|_| error(format!("row label {label:?} is not a hexadecimal register number")))?;
            let (per_row, digits) = match width {
                RegisterWidth::Byte => (16, 2),
                RegisterWidth::Word => (8, 4),
            };
            if usize::from(start) % per_row != 0 {
                return Err(error(format!("row {start:02x} does not start a row of {per_row} registers")));
            }
            let cells: Vec<&str> = rest.split_whitespace().take(per_row).collect();
            if cells.len() < per_row {
                return Err(error(format!("row {start:02x} has {} registers, expected {per_row}", cells.len())));
            }
            for (offset, cell) in cells.into_iter().enumerate() {
                let value = if cell.chars().all(|c| c == 'X' || c == 'x') && cell.len() == digits {
                    None
                } else if cell.len() == digits {
                    Some(u16::from_str_radix(cell, 16).map_err(|_| {
                        error(format!(
                            "register {:02x}: {cell:?} is not {digits} hexadecimal digits or XX",
                            usize::from(start) + offset
                        ))
                    })?)
                } else {
                    return Err(error(format!(
                        "register {:02x}: {cell:?} is not {digits} hexadecimal digits",
                        usize::from(start) + offset
                    )));
                };
                registers[usize::from(start) + offset] = value;
            }
            rows += 1;
        }
        let Some(width) = width else {
            return Err(DumpError {
                line: text.lines().count().max(1),
                message: "no i2cdump header (`     0  1  2  3 …` or `     0,8  1,9 …`) was found".to_owned(),
            });
        };
        if rows == 0 {
            return Err(DumpError { line: text.lines().count(), message: "the dump lists no registers".to_owned() });
        }
        Ok(Self { width, registers })
    }

    /// The register at `pointer`, `None` when it does not answer.
    pub fn get(&self, pointer: u8) -> Option<u16> {
        self.registers.get(usize::from(pointer)).copied().flatten()
    }
}

/// The width a header line announces, `None` for any other line (i2cdump's preamble).
fn header(line: &str) -> Option<RegisterWidth> {
    let cells: Vec<&str> = line.split_whitespace().collect();
    if cells.first() == Some(&"0,8") && cells.len() >= 8 {
        return Some(RegisterWidth::Word);
    }
    let hex = "0123456789abcdef";
    let byte_header = cells.len() >= 16 && cells.iter().take(16).zip(hex.chars()).all(|(c, h)| *c == h.to_string());
    byte_header.then_some(RegisterWidth::Byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: &str = "\
No size specified (using byte-data access)
     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f    0123456789abcdef
00: 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f    ................
d0: 60 XX 00 00 00 00 00 00 00 00 00 00 00 00 00 00    `...............
";

    #[test]
    fn a_byte_dump_reads_with_unanswered_and_unlisted_registers() {
        let dump = RegisterDump::parse(BYTES).expect("it works");
        assert_eq!(dump.width, RegisterWidth::Byte);
        assert_eq!(dump.get(0x0f), Some(0x0f));
        assert_eq!(dump.get(0xd0), Some(0x60));
        assert_eq!(dump.get(0xd1), None, "XX");
        assert_eq!(dump.get(0x40), None, "not listed");
    }

    #[test]
    fn a_word_dump_keeps_the_smbus_words() {
        let text = "     0,8  1,9  2,a  3,b  4,c  5,d  6,e  7,f\n00: 0080 8385 0080 ff7f XXXX XXXX XXXX XXXX\n";
        let dump = RegisterDump::parse(text).expect("it works");
        assert_eq!(dump.width, RegisterWidth::Word);
        assert_eq!(dump.get(1), Some(0x8385));
        assert_eq!(dump.get(4), None);
    }

    #[test]
    fn wrong_lines_are_named() {
        let short = "     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f\n00: 00 01\n";
        assert_eq!(RegisterDump::parse(short).expect_err("it fails").line, 2);
        let bad = "     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f\n\n10: 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e zz\n";
        let error = RegisterDump::parse(bad).expect_err("it fails");
        assert_eq!(error.line, 3);
        assert!(error.message.contains("register 1f"), "{error}");
        assert!(RegisterDump::parse("nothing here\n").expect_err("it fails").message.contains("header"));
        let misaligned = "     0,8  1,9  2,a  3,b  4,c  5,d  6,e  7,f\n04: 0000 0000 0000 0000 0000 0000 0000 0000\n";
        assert!(RegisterDump::parse(misaligned).expect_err("it fails").message.contains("does not start a row"));
    }
}
