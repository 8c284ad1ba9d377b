//! The kubelet's image pull: CRI `ImageService/PullImage` over containerd's socket. gRPC is
//! HTTP/2 with a 5-byte frame header; the two messages involved have one string field each,
//! so they are encoded by hand rather than generated.

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
/// A pull of a few small layers; bounds a hung call.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// Protobuf: field 1, length-delimited.
fn field_one(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

/// The string in field 1 of a message (PullImageResponse.image_ref), if that is its first field.
fn read_field_one(mut message: &[u8]) -> Option<String> {
    if message.first() != Some(&0x0a) {
        return None;
    }
    message = &message[1..];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = *message.first()?;
        message = &message[1..];
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    String::from_utf8(message.get(..len)?.to_vec()).ok()
}

/// `PullImage(image)` as the kubelet sends it: `Ok(image_ref)` (containerd answers the image
/// id, the config digest), or `Err` with the gRPC status and message.
pub fn pull_image(socket: &Path, image: &str) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(PULL_TIMEOUT, call(socket, image))
            .await
            .map_err(|_| format!("PullImage {image} took over {PULL_TIMEOUT:?}"))?
    })
}

async fn call(socket: &Path, image: &str) -> Result<String, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(connection);
    // PullImageRequest { image: ImageSpec { image } }
    let message = field_one(&field_one(image.as_bytes()));
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let request = http::Request::post(format!("http://localhost{PULL_IMAGE}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("PullImage: {e}"))?;
    let headers = response.headers().clone();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("PullImage body: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    // A failed call may answer in the headers alone (trailers-only).
    let status = |name: &str| {
        trailers
            .get(name)
            .or_else(|| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if status("grpc-status") != "0" {
        return Err(format!(
            "grpc-status {}: {}",
            status("grpc-status"),
            status("grpc-message")
        ));
    }
    let mut frame = collected.to_bytes();
    if frame.len() < 5 {
        return Err("PullImage: no response message".into());
    }
    frame.advance(5);
    read_field_one(&frame).ok_or_else(|| "PullImage: no image_ref".into())
}
