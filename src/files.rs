//! How every command touches the user's files. Writing: an output never replaces an input of the
//! same command (by identity: through symlinks and hard links too), never replaces an existing
//! file without `--force`, never replaces anything that is not a regular file (`/dev/null` stays a
//! device), and appears only complete (temporary name in the same folder, then a rename).
//! Reading: the small text inputs (steer.csv, prompts, caches) are read with a size bound, so
//! `/dev/zero` is an error and not an out-of-memory kill, and every error names the file.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The files a command reads, by device and inode, so an output can be refused when it is one
/// of them under any name.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    files: Vec<(u64, u64, PathBuf)>,
}

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `path` (following symlinks) if it exists; a missing path is not an input.
    pub fn add(&mut self, path: &Path) {
        if let Ok(meta) = fs::metadata(path) {
            self.files.push((meta.dev(), meta.ino(), path.to_path_buf()));
        }
    }

    /// Records `dir` itself and every file below it (symlinks followed), for inputs that are a
    /// whole folder, such as a checkpoint.
    pub fn add_tree(&mut self, dir: &Path) {
        self.add_tree_once(dir, &mut std::collections::HashSet::new());
    }

    /// `add_tree`, entering each folder once: a symlink to a folder above it would otherwise
    /// recurse until the stack overflows.
    fn add_tree_once(&mut self, dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) {
        let Ok(meta) = fs::metadata(dir) else {
            return;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        self.add(dir);
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => self.add_tree_once(&path, seen),
                Ok(_) => self.add(&path),
                Err(_) => {}
            }
        }
    }

    /// The recorded input that `path` is (same device and inode), if any.
    pub fn find(&self, path: &Path) -> Option<&Path> {
        let meta = fs::metadata(path).ok()?;
        self.files
            .iter()
            .find(|(dev, ino, _)| *dev == meta.dev() && *ino == meta.ino())
            .map(|(_, _, p)| p.as_path())
    }
}

/// Refuses to write `path` when that would destroy something: an input of this command, an
/// existing file without `force`, or anything that is not a regular file (a folder, a device,
/// a pipe).
pub fn check_output(path: &Path, inputs: &Inputs, force: bool) -> Result<()> {
    if path.as_os_str().is_empty() {
        bail!("the output path is empty");
    }
    if let Some(input) = inputs.find(path) {
        if input == path {
            bail!(
                "refusing to write '{}': it is an input of this command",
                path.display()
            );
        }
        bail!(
            "refusing to write '{}': it is '{}', an input of this command",
            path.display(),
            input.display()
        );
    }
    let Ok(link) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let meta = fs::metadata(path).unwrap_or(link);
    if meta.is_dir() {
        bail!(
            "'{}' is a folder; give a file name for the output",
            path.display()
        );
    }
    if !meta.is_file() {
        bail!(
            "refusing to write '{}': it is not a regular file (a device, pipe or socket) and would be replaced by one",
            path.display()
        );
    }
    if !force {
        bail!("'{}' already exists; pass --force to replace it", path.display());
    }
    Ok(())
}

/// A temporary file in `dir` for the output `name`, to be renamed into place when complete
/// (`.NAME.PID@HOST.RANDOM.tmp`). Created with mode 0666 less the umask, as an ordinary file
/// would be: tempfile's default, 0600, would make what we write unreadable to other users.
/// Temporary files of the same output left by runs that died on this host are removed first.
pub fn temp_file(dir: &Path, name: &str) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let owner = format!("{}@{}", std::process::id(), host_name());
    remove_stale_temps(dir, name);
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{owner}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in '{}'", folder_name(dir)))
}

/// A temporary folder in `dir` for the output folder `name`, to be renamed into place when
/// complete; named and cleaned up as [`temp_file`]'s files are.
pub fn temp_dir(dir: &Path, name: &str) -> Result<tempfile::TempDir> {
    let owner = format!("{}@{}", std::process::id(), host_name());
    remove_stale_temps(dir, name);
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{owner}."))
        .suffix(".tmp")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a temporary folder in '{}'", folder_name(dir)))
}

/// A temporary file beside `path`, for writing `path`.
pub fn temp_file_for(path: &Path) -> Result<tempfile::NamedTempFile> {
    temp_file(parent_dir(path), &file_name(path))
}

/// Renames a complete temporary file into place (after flushing it to disk).
pub fn persist(temp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    temp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file; the caller has checked the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = temp_file_for(path)?;
    temp.write_all(bytes)
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    persist(temp, path)
}

/// The folder a path's file lives in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn folder_name(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        dir.display().to_string()
    }
}

/// This host's name as temporary file names carry it (characters other than ASCII letters,
/// digits and `-` become `_`).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes `.NAME.PID@HOST.*.tmp` files whose writer, a process on this host, is gone. Files of
/// other hosts (a shared filesystem) and of live processes are left alone.
fn remove_stale_temps(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    let host = host_name();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        if !file.ends_with(".tmp") {
            continue;
        }
        let Some((owner, _)) = rest.split_once('.') else {
            continue;
        };
        let Some((pid, owner_host)) = owner.split_once('@') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        if owner_host == host && !process_alive(pid) {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
        }
    }
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Reads a UTF-8 text input of at most `max_bytes`, naming `what` and the file in every error.
pub fn read_text(path: &Path, what: &str, max_bytes: u64) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {what} '{}'", path.display()))?;
    if meta.is_dir() {
        bail!("{what} '{}' is a folder, not a file", path.display());
    }
    let file = fs::File::open(path).with_context(|| format!("cannot read {what} '{}'", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} '{}'", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        bail!(
            "{what} '{}' is larger than {} MiB; is it the right file?",
            path.display(),
            max_bytes >> 20
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(&e.as_bytes()[..offset]);
        let line = text.matches('\n').count() + 1;
        anyhow::anyhow!(
            "{what} '{}' is not UTF-8 text (line {line}, byte {offset})",
            path.display()
        )
    })
}

/// `text` safe to echo in an error message: control characters (NUL, ANSI escapes, ...) shown
/// as Rust escapes, and cut to `max_chars`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_inputs_under_other_names_and_existing_files_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("steer.csv");
        fs::write(&input, "x").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.csv");
        fs::hard_link(&input, &hard).unwrap();
        let mut inputs = Inputs::new();
        inputs.add(&input);
        for path in [&input, &link, &hard] {
            let err = check_output(path, &inputs, true).unwrap_err().to_string();
            assert!(err.contains("input of this command"), "{err}");
        }
        let other = dir.path().join("other.onnx");
        fs::write(&other, "y").unwrap();
        let err = check_output(&other, &inputs, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        check_output(&other, &inputs, true).unwrap();
        check_output(&dir.path().join("new.onnx"), &inputs, false).unwrap();
        let err = check_output(Path::new("/dev/null"), &inputs, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = check_output(dir.path(), &inputs, true).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
    }

    #[test]
    fn stale_temps_of_dead_writers_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_name();
        let dead = dir.path().join(format!(".m.onnx.999999999@{host}.abc.tmp"));
        let live = dir
            .path()
            .join(format!(".m.onnx.{}@{host}.abc.tmp", std::process::id()));
        let foreign = dir.path().join(".m.onnx.1@elsewhere.abc.tmp");
        for p in [&dead, &live, &foreign] {
            fs::write(p, "").unwrap();
        }
        let temp = temp_file(dir.path(), "m.onnx").unwrap();
        assert!(!dead.exists());
        assert!(live.exists() && foreign.exists() && temp.path().exists());
    }

    #[test]
    fn bounded_reads_name_the_file() {
        let err = read_text(Path::new("/dev/zero"), "steer.csv", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("larger than 1 MiB"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("p.txt");
        fs::write(&bad, b"ok\n\xff").unwrap();
        let err = read_text(&bad, "prompts file", 1 << 20).unwrap_err().to_string();
        assert!(err.contains("p.txt") && err.contains("line 2"), "{err}");
        assert_eq!(printable("a\0b\x1b[31m", 100), "a\\u{0}b\\u{1b}[31m");
    }
}
