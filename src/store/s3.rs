//! S3 store: one object per key in a bucket (under an optional prefix), via `object_store`.
//!
//! S3 has no rename, so a verified spool file is uploaded straight to its final key: a multipart
//! upload becomes visible only on `CompleteMultipartUpload`, so a failed upload leaves nothing
//! (it is aborted; one cut short by a crash is invisible and left to the bucket's lifecycle
//! rule for incomplete uploads). Two writers of one key write the same verified bytes; the
//! last to complete wins and both are correct.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, PutMode, PutOptions,
    PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::housekeeping::scan::ObjectKind;
use super::{BlobStore, ByteStream, Listed, StoreError};
use crate::config::S3Config;

/// Files up to this size are sent with one PUT; larger ones as a multipart upload.
const SINGLE_PUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Part size of a multipart upload (S3's minimum is 5 MiB; 10,000 parts = 80 GiB at most).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once during an upload (memory per upload: about (this + 1) × PART_SIZE).
const UPLOAD_CONCURRENCY: usize = 3;
const READ_CHUNK: usize = 1024 * 1024;
/// How long berth waits on S3 for a small answer (HEAD, a manifest or record, a lease, DELETE, a
/// listing page) or for the next chunk of a blob body. A bucket that stopped answering (a
/// frozen server, a black-holed path on a kept-alive connection) then fails like one that
/// refuses, and the mirror falls back to the upstream instead of hanging: the client's
/// request timeout is disabled, since a body streams at the client's pace. Uploads of
/// verified fills are not bounded: they run in the fill's own task and finish when S3 is back.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

pub struct S3Store {
    s3: Arc<AmazonS3>,
    prefix: Option<ObjectPath>,
    /// For messages: `s3://bucket/prefix`.
    location: String,
}

impl S3Store {
    /// Builds the client; makes no request (an unreachable S3 shows up on first use).
    pub fn open(config: &S3Config) -> Result<S3Store, StoreError> {
        let mut options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // A blob body is streamed at the client's pace: no whole-request deadline.
            .with_timeout_disabled()
            .with_allow_http(config.allow_http);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| StoreError::Config {
                message: format!("cannot read ca_file {}: {e}", path.display()),
            })?;
            let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                StoreError::Config {
                    message: format!("ca_file {}: {e}", path.display()),
                }
            })?;
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        // An unreachable S3 must fail within seconds, so the mirror can fall back to the upstream.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
        };
        // Environment first (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
        // AWS_ENDPOINT, ...), then what the config file says.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(config.virtual_hosted_style)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| StoreError::Config {
            message: format!("S3 bucket {}: {e}", config.bucket),
        })?;
        let prefix = match &config.prefix {
            Some(p) => Some(ObjectPath::parse(p).map_err(|e| StoreError::Config {
                message: format!("S3 prefix {p:?}: {e}"),
            })?),
            None => None,
        };
        let location = match &config.prefix {
            Some(p) => format!("s3://{}/{p}", config.bucket),
            None => format!("s3://{}", config.bucket),
        };
        Ok(S3Store {
            s3: Arc::new(s3),
            prefix,
            location,
        })
    }

    /// `s3://bucket[/prefix]`, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The object path of `key`; refuses what the disk store refuses (empty, `.`, `..`, `//`, `/x`).
    fn path(&self, key: &str) -> Result<ObjectPath, StoreError> {
        let valid = !key.is_empty()
            && key
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        let relative = valid
            .then(|| ObjectPath::parse(key).ok())
            .flatten()
            .ok_or_else(|| StoreError::InvalidKey(key.into()))?;
        Ok(match &self.prefix {
            Some(prefix) => prefix.parts().chain(relative.parts()).collect(),
            None => relative,
        })
    }

    /// The store key of an object path (strips the prefix).
    fn key_of(&self, path: &ObjectPath) -> Option<String> {
        match &self.prefix {
            Some(prefix) => {
                let rest: Vec<_> = path.prefix_match(prefix)?.collect();
                Some(
                    rest.iter()
                        .map(|p| p.as_ref())
                        .collect::<Vec<_>>()
                        .join("/"),
                )
            }
            None => Some(path.to_string()),
        }
    }

    fn remote(&self, key: &str, e: object_store::Error) -> StoreError {
        StoreError::Remote {
            key: key.to_string(),
            message: format!("{} ({})", e, self.location),
        }
    }

    fn timed_out(&self, key: &str) -> StoreError {
        StoreError::Remote {
            key: key.to_string(),
            message: format!(
                "no answer within {}s ({})",
                REQUEST_DEADLINE.as_secs(),
                self.location
            ),
        }
    }

    /// `request` within [`REQUEST_DEADLINE`].
    async fn within<T>(
        &self,
        key: &str,
        request: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(REQUEST_DEADLINE, request)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(key)))
    }

    async fn put_unbounded(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.s3
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.remote(key, e))?;
        Ok(())
    }

    /// Uploads `file` to `path` in parts; aborts the upload on any error.
    async fn upload_multipart(
        &self,
        key: &str,
        path: &ObjectPath,
        mut file: tokio::fs::File,
    ) -> Result<(), StoreError> {
        let upload = self
            .s3
            .put_multipart(path)
            .await
            .map_err(|e| self.remote(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; READ_CHUNK];
        let result: Result<(), StoreError> = async {
            loop {
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(|e| self.remote(key, e))?;
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| StoreError::io(key, e))?;
                if n == 0 {
                    return Ok(());
                }
                writer.write(&buf[..n]);
            }
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await.map_err(|e| self.remote(key, e))?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "could not abort a failed S3 upload; the bucket's lifecycle rule will clean it");
                }
                Err(e)
            }
        }
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        self.within(key, async {
            match self.s3.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(self.remote(key, e)),
            }
        })
        .await
    }

    async fn read(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StoreError> {
        let path = self.path(key)?;
        if range.start >= range.end {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let result = self
            .within(key, async {
                self.s3
                    .get_opts(&path, options)
                    .await
                    .map_err(|e| self.remote(key, e))
            })
            .await?;
        if result.range != range {
            return Err(StoreError::Remote {
                key: key.into(),
                message: format!(
                    "asked {} for bytes {range:?}, got {:?}",
                    self.location, result.range
                ),
            });
        }
        // Each chunk within the deadline, timed only while berth waits for it (a slow client
        // stops polling; that is not S3's silence).
        let location = self.location.clone();
        let chunks = futures::stream::unfold(Some(result.into_stream()), move |body| {
            let location = location.clone();
            async move {
                let mut body = body?;
                match tokio::time::timeout(REQUEST_DEADLINE, body.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => Some((
                        Err(std::io::Error::other(format!("{e} ({location})"))),
                        None,
                    )),
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "S3 sent nothing for {}s ({location})",
                                REQUEST_DEADLINE.as_secs()
                            ),
                        )),
                        None,
                    )),
                }
            }
        });
        Ok(chunks.boxed())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key)?;
        self.within(key, async {
            let result = match self.s3.get(&path).await {
                Ok(r) => r,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(self.remote(key, e)),
            };
            match result.bytes().await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) => Err(self.remote(key, e)),
            }
        })
        .await
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.within(key, self.put_unbounded(key, bytes)).await
    }

    /// `If-None-Match: *` (object_store's `PutMode::Create`). A server that ignores the header
    /// overwrites instead; see the README on which servers support it.
    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.within(key, async {
            match self
                .s3
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(self.remote(key, e)),
            }
        })
        .await
    }

    /// Uploads the file, then deletes it: on success the store owns it, as with a rename.
    async fn commit_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|e| StoreError::io(key, e))?;
        let size = opened
            .metadata()
            .await
            .map_err(|e| StoreError::io(key, e))?
            .len();
        // Content-addressed objects of the same size are the same verified bytes: another
        // replica (a fleet leader, a racing fill) uploaded them already.
        if ObjectKind::of_key(key).is_some() && self.size(key).await.ok().flatten() == Some(size) {
            drop(opened);
            let _ = tokio::fs::remove_file(file).await;
            return Ok(());
        }
        if size <= SINGLE_PUT_LIMIT {
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|e| StoreError::io(key, e))?;
            if bytes.len() as u64 != size {
                return Err(StoreError::io(
                    key,
                    std::io::Error::other("file changed size while it was read"),
                ));
            }
            self.put_unbounded(key, Bytes::from(bytes)).await?;
        } else {
            self.upload_multipart(key, &path, opened).await?;
        }
        if let Err(e) = tokio::fs::remove_file(file).await {
            tracing::warn!(key, file = %file.display(), error = %e, "uploaded, but could not delete the local file");
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.within(key, async {
            match self.s3.delete(&path).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(self.remote(key, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let path = self.path(prefix)?;
        let mut listed = Vec::new();
        let mut stream = self.s3.list(Some(&path));
        // Each page within the deadline: a big bucket may take longer in all.
        while let Some(item) = self
            .within(prefix, async { Ok(stream.next().await) })
            .await?
        {
            let meta = item.map_err(|e| self.remote(prefix, e))?;
            if let Some(key) = self.key_of(&meta.location) {
                listed.push(Listed {
                    key,
                    size: meta.size,
                });
            }
        }
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }
}
