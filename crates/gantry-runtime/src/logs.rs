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
    /// Encoded lines not yet written (one write per chunk read).
    out: Vec<u8>,
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
            out: Vec::with_capacity(64 * 1024),
        })
    }

    /// Takes a chunk read from stream 0 (stdout) or 1 (stderr) and writes
    /// every complete line (all of them in one write, stamped with the
    /// time they were read); a partial line waits for its end (or 16 KiB).
    pub fn write(&mut self, stream: usize, data: &[u8]) -> io::Result<()> {
        let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(pos + 1);
            if self.partial[stream].is_empty() {
                self.emit(stream, line, &time)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial[stream]);
                whole.extend_from_slice(line);
                self.emit(stream, &whole, &time)?;
            }
            rest = tail;
        }
        self.partial[stream].extend_from_slice(rest);
        if self.partial[stream].len() >= 16 * 1024 {
            let line = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &line, &time)?;
        }
        self.write_out()
    }

    /// Writes out partial lines (at the process's end).
    pub fn flush(&mut self) -> io::Result<()> {
        let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        for s in 0..2 {
            if !self.partial[s].is_empty() {
                let line = std::mem::take(&mut self.partial[s]);
                self.emit(s, &line, &time)?;
            }
        }
        self.write_out()
    }

    /// Encodes one line as `{"log":..,"stream":..,"time":..}` (what
    /// serde makes of a [`LogLine`]) into the pending output.
    fn emit(&mut self, stream: usize, bytes: &[u8], time: &str) -> io::Result<()> {
        let start = self.out.len();
        self.out.extend_from_slice(b"{\"log\":");
        serde_json::to_writer(&mut self.out, &String::from_utf8_lossy(bytes))
            .map_err(io::Error::other)?;
        self.out.extend_from_slice(if stream == 0 {
            b",\"stream\":\"stdout\",\"time\":\""
        } else {
            b",\"stream\":\"stderr\",\"time\":\""
        });
        self.out.extend_from_slice(time.as_bytes());
        self.out.extend_from_slice(b"\"}\n");
        let len = (self.out.len() - start) as u64;
        if self.size + start as u64 + len > self.max_size && self.size + start as u64 > 0 {
            // This line starts a new file: what came before goes to the old.
            let line = self.out.split_off(start);
            self.write_out()?;
            self.rotate()?;
            self.out = line;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.file.write_all(&self.out)?;
            self.size += self.out.len() as u64;
            self.out.clear();
        }
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

/// Reads a container's log in order, from its oldest rotated file (or from
/// the end) on, and keeps reading as the log grows and rotates: each call
/// of [`Cursor::next_line`] gives the next complete line there is now.
/// Memory stays one line, whatever the log's size.
pub struct Cursor {
    base: PathBuf,
    /// Rotated files still to read, oldest first.
    pending: Vec<PathBuf>,
    /// The file being read, its inode, and whether it is the current log
    /// (which may grow) rather than a rotated one (which may not).
    cur: Option<(BufReader<File>, u64, bool)>,
    /// A line read in part.
    buf: Vec<u8>,
}

impl Cursor {
    /// A cursor at the start of the oldest rotated file.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let base = dir.join(LOG_FILE);
        let mut pending: Vec<PathBuf> = (1..1000)
            .map(|i| rotated(&base, i))
            .take_while(|p| p.exists())
            .collect();
        pending.reverse();
        Ok(Self {
            base,
            pending,
            cur: None,
            buf: Vec::new(),
        })
    }

    /// A cursor at the end of the current log: only lines written from now.
    pub fn at_end(dir: &Path) -> io::Result<Self> {
        let base = dir.join(LOG_FILE);
        let mut c = Self {
            base,
            pending: Vec::new(),
            cur: None,
            buf: Vec::new(),
        };
        match File::open(&c.base) {
            Ok(mut f) => {
                let ino = f.metadata()?.ino();
                f.seek(SeekFrom::End(0))?;
                c.cur = Some((BufReader::new(f), ino, true));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(c)
    }

    /// The next complete line, or `None` when there is none yet.
    /// Unparseable lines are skipped.
    pub fn next_line(&mut self) -> io::Result<Option<LogLine>> {
        while let Some(raw) = self.next_raw()? {
            if let Ok(l) = serde_json::from_slice::<LogLine>(raw) {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// The next complete line as written (JSON, with its newline), or
    /// `None` when there is none yet.
    pub fn next_raw(&mut self) -> io::Result<Option<&[u8]>> {
        if self.buf.ends_with(b"\n") {
            self.buf.clear();
        }
        loop {
            if self.cur.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let (reader, ino, current) = self.cur.as_mut().expect("a file is open");
            let n = reader.read_until(b'\n', &mut self.buf)?;
            if self.buf.ends_with(b"\n") {
                return Ok(Some(&self.buf));
            }
            if n > 0 {
                continue;
            }
            // At the end of this file.
            if !*current {
                self.buf.clear();
                self.cur = None;
                continue;
            }
            match fs::metadata(&self.base) {
                // Rotated away: what is left of it was read above (the
                // writer renames only after whole lines); go on with the
                // new file.
                Ok(md) if md.ino() != *ino => {
                    if reader.read_until(b'\n', &mut self.buf)? > 0 {
                        continue;
                    }
                    self.buf.clear();
                    self.cur = None;
                    continue;
                }
                // Truncated in place (no rotated files kept).
                Ok(md) if md.len() < reader.stream_position()? => {
                    reader.seek(SeekFrom::Start(0))?;
                    self.buf.clear();
                    continue;
                }
                _ => return Ok(None),
            }
        }
    }

    /// Opens the next file to read; false when there is none yet.
    fn open_next(&mut self) -> io::Result<bool> {
        while !self.pending.is_empty() {
            let p = self.pending.remove(0);
            match File::open(&p) {
                Ok(f) => {
                    let ino = f.metadata()?.ino();
                    self.cur = Some((BufReader::new(f), ino, false));
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        match File::open(&self.base) {
            Ok(f) => {
                let ino = f.metadata()?.ino();
                self.cur = Some((BufReader::new(f), ino, true));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Reads a container's log: all rotated files oldest first, then the current.
pub fn read_all(dir: &Path) -> io::Result<Vec<LogLine>> {
    let mut c = Cursor::open(dir)?;
    let mut out = Vec::new();
    while let Some(l) = c.next_line()? {
        out.push(l);
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
    let mut c = Cursor::at_end(dir)?;
    loop {
        while let Some(l) = c.next_line()? {
            emit(&l)?;
        }
        if done() {
            // One last read for what came before the end.
            while let Some(l) = c.next_line()? {
                emit(&l)?;
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
