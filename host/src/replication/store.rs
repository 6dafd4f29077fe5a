//! The module store: fetched components on disk, named by their sha256, each written whole
//! (to a temporary file, then renamed) and checked against its name when read back.

use std::io;
use std::path::{Path, PathBuf};

use crate::plugins::signature;

pub struct ModuleStore {
    dir: PathBuf,
}

impl ModuleStore {
    /// Opens (creating it) the store in `dir`.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ModuleStore { dir })
    }

    /// Where module `digest` is kept.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// The module `digest` and its signature, if held intact (a corrupt file is removed).
    pub async fn get(&self, digest: &str) -> Option<(Vec<u8>, Option<String>)> {
        let path = self.path(digest);
        let bytes = tokio::fs::read(&path).await.ok()?;
        let (bytes, actual) = crate::runtime::digest_off_thread(bytes).await?;
        if actual != digest {
            tracing::warn!(file = %path.display(), "a stored module does not match its digest; removed");
            let _ = tokio::fs::remove_file(&path).await;
            return None;
        }
        let signature = tokio::fs::read_to_string(sig_path(&path)).await.ok();
        Some((bytes, signature))
    }

    /// Forgets module `digest` (it was refused: the next attempt fetches it, and its current
    /// signature, again).
    pub async fn remove(&self, digest: &str) {
        let path = self.path(digest);
        let _ = tokio::fs::remove_file(sig_path(&path)).await;
        let _ = tokio::fs::remove_file(&path).await;
    }

    /// Keeps module `digest` (already checked) and its signature; returns its path.
    pub async fn put(&self, digest: &str, bytes: &[u8], signature: Option<&str>) -> io::Result<PathBuf> {
        let path = self.path(digest);
        if let Some(signature) = signature {
            write_whole(&sig_path(&path), signature.as_bytes()).await?;
        }
        write_whole(&path, bytes).await?;
        Ok(path)
    }
}

fn sig_path(path: &Path) -> PathBuf {
    let mut sig = path.as_os_str().to_owned();
    sig.push(signature::SUFFIX);
    PathBuf::from(sig)
}

async fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
