//! Following a server's progress stream (replay and dead-letter replay): a bar on a
//! terminal's standard error while it runs, and the last report as the result.

use std::io::IsTerminal;

use tonic::Streaming;

use crate::{
    exit::{Exit, Failure},
    output::Format,
};

/// Reads `stream` to its end and returns the last report; while it runs, a terminal
/// shows `line` of each report (only for table output, so JSON stays clean).
pub async fn follow<T>(
    mut stream: Streaming<T>,
    format: Format,
    line: impl Fn(&T) -> String,
) -> Result<T, Failure> {
    let show = format == Format::Table && std::io::stderr().is_terminal();
    let mut last = None;
    while let Some(progress) = stream.message().await? {
        if show {
            eprint!("\r{}", line(&progress));
        }
        last = Some(progress);
    }
    if show {
        eprintln!();
    }
    last.ok_or_else(|| Failure::new(Exit::Refused, "the server ended without a result"))
}

/// `[####------] done/total`.
pub fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(done).max(1);
    let filled = (done * WIDTH / total).min(WIDTH) as usize;
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(super::bar(0, 0), format!("[{}] 0/1", "-".repeat(30)));
        assert_eq!(
            super::bar(5, 10),
            format!("[{}{}] 5/10", "#".repeat(15), "-".repeat(15))
        );
        assert_eq!(super::bar(12, 10), format!("[{}] 12/12", "#".repeat(30)));
    }
}
