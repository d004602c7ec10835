//! `weir dead-letters`: the newest dead letters kept in a data directory, as text or one JSON
//! object per line, read without changing the file (also after a crash, through an in-memory
//! repair). A running gateway holds the database: refused, as it keeps no copy elsewhere.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use weir_host::state::inspect::{self, DeadLetters};
use weir_host::state::{self, DeadLetterContent};

/// `weir dead-letters` and its options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's data directory.
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: PathBuf,
    /// How many of the newest to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Prints a summary line (text only), then each dead letter, oldest of the newest first.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let Self { data_dir, limit, json } = self;
        let mut out = std::io::stdout().lock();
        if !data_dir.join(state::DATABASE_FILE).is_file() {
            anyhow::bail!("{} holds no weir state (no {})", data_dir.display(), state::DATABASE_FILE);
        }
        // A running gateway holds the database: refused (in use), as it keeps no copy elsewhere.
        let inspected = inspect::dead_letters(&data_dir, limit)?;
        let DeadLetters { newest, kept, evicted } = inspected.value;
        if !json {
            let repaired =
                if inspected.repaired { " (left by an unclean stop; read through an in-memory repair)" } else { "" };
            writeln!(out, "{kept} dead letter(s) kept, {evicted} evicted; newest {}{repaired}:", newest.len())?;
        }
        for (id, letter) in newest {
            let mut entry = serde_json::json!({
                "id": id, "pipeline": letter.pipeline, "stage": letter.stage, "reason": letter.reason, "at": letter.at,
                "function": letter.function,
            });
            match &letter.content {
                DeadLetterContent::Message { topic, payload, received_at, size } => {
                    entry["topic"] = topic.clone().into();
                    entry["size"] = size.unwrap_or(payload.len() as u64).into();
                    entry["truncated"] = size.is_some().into();
                    entry["payload_hex"] = hex::encode(payload).into();
                    entry["payload_text"] = String::from_utf8(payload.clone()).ok().into();
                    entry["received_at"] = (*received_at).into();
                }
                DeadLetterContent::Batch { record, readings } => {
                    entry["readings"] = (*readings).into();
                    if let Ok(decoded) = weir_record::read(record) {
                        let samples: Vec<_> = decoded
                            .batch
                            .iter()
                            .map(|s| serde_json::json!({"series": s.series.name, "ts": s.ts, "value": s.value}))
                            .collect();
                        entry["samples"] = samples.into();
                    }
                }
            }
            if json {
                writeln!(out, "{entry}")?;
            } else {
                let function = letter.function.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
                writeln!(out, "#{id} {} [{}{function}] {}", letter.pipeline, letter.stage, letter.reason)?;
                match &letter.content {
                    DeadLetterContent::Message { topic, payload, size, .. } => {
                        let preview = String::from_utf8(payload.clone()).unwrap_or_else(|_| hex::encode(payload));
                        let kept =
                            size.map(|size| format!(" (first {} of {size} bytes)", payload.len())).unwrap_or_default();
                        writeln!(
                            out,
                            "    message on {topic}{kept}: {}",
                            preview.chars().take(120).collect::<String>()
                        )?;
                    }
                    DeadLetterContent::Batch { readings, .. } => writeln!(out, "    batch of {readings} reading(s)")?,
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
