//! Container logs: JSON lines (`{"log":..,"stream":..,"time":..}`, Docker's
//! json-file format) in `<dir>/container.log`, rotated by size to
//! `container.log.1`, `.2`, ...; read back in order, tailed and followed
//! across rotation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file name of the current log.
pub const LOG_FILE: &str = "container.log";

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The text, with its newline when it had one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When the monitor read it.
    pub time: DateTime<Utc>,
}

/// Appends lines to a container's log, rotating by size.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) the log in `dir`.
    pub fn open(dir: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_owned(),
            file,
            size,
            max_size: max_size.max(1024),
            max_files,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Takes a chunk read from stream 0 (stdout) or 1 (stderr) and writes
    /// every complete line; a partial line waits for its end (or 16 KiB).
    pub fn write(&mut self, stream: usize, data: &[u8]) -> io::Result<()> {
        self.partial[stream].extend_from_slice(data);
        while let Some(pos) = self.partial[stream].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial[stream].drain(..=pos).collect();
            self.emit(stream, &line)?;
        }
        if self.partial[stream].len() >= 16 * 1024 {
            let line = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &line)?;
        }
        Ok(())
    }

    /// Writes out partial lines (at the process's end).
    pub fn flush(&mut self) -> io::Result<()> {
        for s in 0..2 {
            if !self.partial[s].is_empty() {
                let line = std::mem::take(&mut self.partial[s]);
                self.emit(s, &line)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, stream: usize, bytes: &[u8]) -> io::Result<()> {
        let line = LogLine {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: if stream == 0 { "stdout" } else { "stderr" }.to_owned(),
            time: Utc::now(),
        };
        let mut json = serde_json::to_vec(&line).map_err(io::Error::other)?;
        json.push(b'\n');
        if self.size + json.len() as u64 > self.max_size && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&json)?;
        self.size += json.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let base = self.dir.join(LOG_FILE);
        if self.max_files == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.max_files).rev() {
            let from = rotated(&base, i);
            if from.exists() {
                fs::rename(&from, rotated(&base, i + 1))?;
            }
        }
        fs::rename(&base, rotated(&base, 1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&base)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(base: &Path, i: u32) -> PathBuf {
    PathBuf::from(format!("{}.{i}", base.display()))
}

/// Reads a container's log: all rotated files oldest first, then the current.
pub fn read_all(dir: &Path) -> io::Result<Vec<LogLine>> {
    let base = dir.join(LOG_FILE);
    let mut files: Vec<PathBuf> = (1..1000)
        .map(|i| rotated(&base, i))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(base);
    let mut out = Vec::new();
    for f in files {
        let file = match File::open(&f) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            if let Ok(l) = serde_json::from_str::<LogLine>(&line?) {
                out.push(l);
            }
        }
    }
    Ok(out)
}

/// Follows the current log file from its end, across rotation, calling
/// `emit` for each new line, until `done()` says the writer has finished
/// and nothing more is to be read.
pub fn follow(
    dir: &Path,
    mut emit: impl FnMut(&LogLine) -> io::Result<()>,
    done: impl Fn() -> bool,
) -> io::Result<()> {
    let base = dir.join(LOG_FILE);
    let mut file = File::open(&base)?;
    let mut ino = file.metadata()?.ino();
    file.seek(SeekFrom::End(0))?;
    let mut reader = BufReader::new(file);
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n > 0 && buf.ends_with('\n') {
            if let Ok(l) = serde_json::from_str::<LogLine>(&buf) {
                emit(&l)?;
            }
            continue;
        }
        if n > 0 {
            // A line being written: go back and read it whole later.
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        // At the end: has the file been rotated away?
        match fs::metadata(&base) {
            Ok(md) if md.ino() != ino => {
                let f = File::open(&base)?;
                ino = f.metadata()?.ino();
                reader = BufReader::new(f);
                continue;
            }
            _ => {}
        }
        if done() {
            // One last read for what came before the end.
            buf.clear();
            while reader.read_line(&mut buf)? > 0 {
                if let Ok(l) = serde_json::from_str::<LogLine>(&buf) {
                    emit(&l)?;
                }
                buf.clear();
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_and_rotate() {
        let t = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(t.path(), 1024, 2).unwrap();
        w.write(0, b"hel").unwrap();
        w.write(1, b"err\n").unwrap();
        w.write(0, b"lo\nworld\n").unwrap();
        let lines = read_all(t.path()).unwrap();
        let texts: Vec<_> = lines
            .iter()
            .map(|l| (l.stream.as_str(), l.log.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                ("stderr", "err\n"),
                ("stdout", "hello\n"),
                ("stdout", "world\n")
            ]
        );
        for i in 0..100 {
            w.write(0, format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(t.path().join("container.log.1").exists());
        assert!(t.path().join("container.log.2").exists());
        assert!(!t.path().join("container.log.3").exists());
        let lines = read_all(t.path()).unwrap();
        // Oldest files were dropped; what is left is in order and ends last.
        assert_eq!(lines.last().unwrap().log, "line 99\n");
        let nums: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.log.strip_prefix("line ")?.trim().parse().ok())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn follow_crosses_rotation() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_owned();
        let mut w = LogWriter::open(&dir, 1024, 3).unwrap();
        w.write(0, b"before\n").unwrap();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = finished.clone();
        let d2 = dir.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            follow(
                &d2,
                |l| {
                    got.push(l.log.clone());
                    Ok(())
                },
                || f2.load(std::sync::atomic::Ordering::SeqCst),
            )
            .unwrap();
            got
        });
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..60 {
            w.write(0, format!("n{i}\n").as_bytes()).unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(60));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        let got = reader.join().unwrap();
        let want: Vec<String> = (0..60).map(|i| format!("n{i}\n")).collect();
        assert_eq!(got, want);
    }
}
