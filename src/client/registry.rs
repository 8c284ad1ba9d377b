//! The registry API as containerd calls a mirror (protocol notes §1): `/v2/<repo>/…?ns=<registry>`,
//! containerd's `Accept` list on manifests, Basic credentials when the berth has users, and
//! `Cache-Control: only-if-cached` to ask what the cache alone holds.

use bytes::Bytes;
use http::StatusCode;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use url::Url;

use super::{BerthClient, Body, ClientError, read_bounded};
use crate::oci::{
    DOCKER_LIST, DOCKER_MANIFEST, Digest, MAX_MANIFEST_SIZE, OCI_INDEX, OCI_MANIFEST, Reference,
    Repository,
};

/// What containerd sends when it resolves a tag (protocol notes §1.2), in its order.
const CONTAINERD_ACCEPT: [&str; 5] = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"];
const DIGEST_HEADER: &str = "docker-content-digest";
const ONLY_IF_CACHED: &str = "only-if-cached";

/// May the berth fetch what it does not hold?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// As a node pulls: the berth fetches from the upstream what its cache lacks.
    Pull,
    /// `Cache-Control: only-if-cached`: the cache alone answers; what it lacks is `None`.
    CacheOnly,
}

/// What a manifest HEAD says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

/// A manifest as the berth sent it: its bytes (at most [`MAX_MANIFEST_SIZE`]), not verified.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `Content-Type`, empty when absent.
    pub media_type: String,
    /// `Docker-Content-Digest`, when sent and valid.
    pub digest: Option<Digest>,
    pub bytes: Bytes,
}

/// What a blob HEAD says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHead {
    pub size: Option<u64>,
}

impl BerthClient {
    /// `GET /v2/`: is a registry listening there, and does it take our credentials?
    /// `Err(Status)` for any answer but 200.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let url = BerthClient::url(&self.base, &["v2", ""]);
        let response = self
            .send(self.registry_request(reqwest::Method::GET, &url), &url)
            .await?;
        if response.status() != StatusCode::OK {
            return Err(ClientError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
                message: "not 200".into(),
            });
        }
        Ok(())
    }

    /// Resolves `reference` with a HEAD, as containerd does; a failed HEAD is asked again as a
    /// GET, whose body says why (containerd, too, retries as GET). `None`: not cached
    /// ([`Lookup::CacheOnly`]).
    pub async fn head_manifest(
        &self,
        registry: &str,
        repo: &Repository,
        reference: &Reference,
        lookup: Lookup,
    ) -> Result<Option<ManifestHead>, ClientError> {
        let url = self.manifest_url(registry, repo, reference);
        let head = self.manifest_request(reqwest::Method::HEAD, &url, lookup);
        let Some(mut response) = self.looked_up(head, &url, lookup).await? else {
            return Ok(None);
        };
        if !response.status().is_success() {
            let get = self.manifest_request(reqwest::Method::GET, &url, lookup);
            let Some(again) = self.looked_up(get, &url, lookup).await? else {
                return Ok(None);
            };
            response = again;
        }
        let response = BerthClient::ok(response).await?;
        let digest = header(&response, DIGEST_HEADER)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Invalid {
                url: url.to_string(),
                message: "the mirror sent no valid Docker-Content-Digest".into(),
            })?;
        Ok(Some(ManifestHead {
            digest,
            media_type: header(&response, CONTENT_TYPE.as_str()),
            size: response.content_length(),
        }))
    }

    /// GETs a manifest (refused beyond [`MAX_MANIFEST_SIZE`]). `None`: not cached
    /// ([`Lookup::CacheOnly`]). The caller verifies it against the digest it asked for.
    pub async fn get_manifest(
        &self,
        registry: &str,
        repo: &Repository,
        reference: &Reference,
        lookup: Lookup,
    ) -> Result<Option<Manifest>, ClientError> {
        let url = self.manifest_url(registry, repo, reference);
        let get = self.manifest_request(reqwest::Method::GET, &url, lookup);
        let Some(response) = self.looked_up(get, &url, lookup).await? else {
            return Ok(None);
        };
        let response = BerthClient::ok(response).await?;
        let too_big = || ClientError::Invalid {
            url: url.to_string(),
            message: "larger than the 4 MiB manifest limit".into(),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_SIZE)
        {
            return Err(too_big());
        }
        let media_type = header(&response, CONTENT_TYPE.as_str()).unwrap_or_default();
        let digest = header(&response, DIGEST_HEADER).and_then(|v| v.parse().ok());
        let bytes = match read_bounded(response, MAX_MANIFEST_SIZE as usize).await {
            Ok(bytes) => bytes,
            Err(ClientError::Invalid { .. }) => return Err(too_big()),
            Err(e) => return Err(e),
        };
        Ok(Some(Manifest {
            media_type,
            digest,
            bytes: bytes.into(),
        }))
    }

    /// Does the berth hold the blob (or, with [`Lookup::Pull`], can it get it)? `None`: not
    /// cached ([`Lookup::CacheOnly`]: 504, or 404).
    pub async fn head_blob(
        &self,
        registry: &str,
        repo: &Repository,
        digest: &Digest,
        lookup: Lookup,
    ) -> Result<Option<BlobHead>, ClientError> {
        let url = self.blob_url(registry, repo, digest);
        let response = self
            .send(
                self.lookup_request(reqwest::Method::HEAD, &url, lookup),
                &url,
            )
            .await?;
        if lookup == Lookup::CacheOnly
            && matches!(
                response.status(),
                StatusCode::GATEWAY_TIMEOUT | StatusCode::NOT_FOUND
            )
        {
            return Ok(None);
        }
        let response = BerthClient::ok(response).await?;
        Ok(Some(BlobHead {
            size: response.content_length(),
        }))
    }

    /// GETs a blob (the berth fills its cache from the upstream as it streams); the body
    /// streams, bounded by the read timeout between chunks. `None`: not cached
    /// ([`Lookup::CacheOnly`]). The caller hashes what it reads.
    pub async fn get_blob(
        &self,
        registry: &str,
        repo: &Repository,
        digest: &Digest,
        lookup: Lookup,
    ) -> Result<Option<Body>, ClientError> {
        let url = self.blob_url(registry, repo, digest);
        let get = self.lookup_request(reqwest::Method::GET, &url, lookup);
        let Some(response) = self.looked_up(get, &url, lookup).await? else {
            return Ok(None);
        };
        let response = BerthClient::ok(response).await?;
        Ok(Some(Body::new(response, self.idle)))
    }

    /// Sends `request`; `None` when a [`Lookup::CacheOnly`] request was answered "not cached"
    /// (504, RFC 9111's answer to `only-if-cached`).
    async fn looked_up(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        lookup: Lookup,
    ) -> Result<Option<reqwest::Response>, ClientError> {
        let response = self.send(request, url).await?;
        if lookup == Lookup::CacheOnly && response.status() == StatusCode::GATEWAY_TIMEOUT {
            return Ok(None);
        }
        Ok(Some(response))
    }

    /// `/v2/<repo>/<tail…>?ns=<registry>`, as containerd addresses a mirror.
    fn registry_url(&self, registry: &str, repo: &Repository, tail: &[&str]) -> Url {
        let mut segments: Vec<&str> = vec!["v2"];
        segments.extend(repo.as_str().split('/'));
        segments.extend(tail);
        let mut url = BerthClient::url(&self.base, &segments);
        url.query_pairs_mut().append_pair("ns", registry);
        url
    }

    fn manifest_url(&self, registry: &str, repo: &Repository, reference: &Reference) -> Url {
        self.registry_url(registry, repo, &["manifests", &reference.to_string()])
    }

    fn blob_url(&self, registry: &str, repo: &Repository, digest: &Digest) -> Url {
        self.registry_url(registry, repo, &["blobs", &digest.to_string()])
    }

    /// A registry API request: Basic credentials when the berth has users.
    fn registry_request(&self, method: reqwest::Method, url: &Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url.clone());
        match &self.basic {
            Some(basic) => request.basic_auth(&basic.username, Some(&basic.password)),
            None => request,
        }
    }

    fn lookup_request(
        &self,
        method: reqwest::Method,
        url: &Url,
        lookup: Lookup,
    ) -> reqwest::RequestBuilder {
        let request = self.registry_request(method, url);
        match lookup {
            Lookup::Pull => request,
            Lookup::CacheOnly => request.header(CACHE_CONTROL, ONLY_IF_CACHED),
        }
    }

    fn manifest_request(
        &self,
        method: reqwest::Method,
        url: &Url,
        lookup: Lookup,
    ) -> reqwest::RequestBuilder {
        self.lookup_request(method, url, lookup)
            .header(ACCEPT, CONTAINERD_ACCEPT.join(", "))
    }
}

/// A header's value as text, trimmed.
fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_accept_is_the_resolver_list_in_its_order() {
        assert_eq!(
            CONTAINERD_ACCEPT.join(", "),
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json, */*"
        );
    }

    #[test]
    fn registry_urls_route_by_ns_like_containerd() {
        let client = BerthClient::builder("http://10.27.27.10:5000".parse().unwrap())
            .build()
            .unwrap();
        let repo: Repository = "library/busybox".parse().unwrap();
        let tag: Reference = Reference::Tag("1.37".parse().unwrap());
        assert_eq!(
            client.manifest_url("docker.io", &repo, &tag).as_str(),
            "http://10.27.27.10:5000/v2/library/busybox/manifests/1.37?ns=docker.io"
        );
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(
            client.blob_url("ghcr.io", &repo, &digest).as_str(),
            format!(
                "http://10.27.27.10:5000/v2/library/busybox/blobs/sha256:{}?ns=ghcr.io",
                "a".repeat(64)
            )
        );
    }
}
