//! Shared test helpers: hand-built IDX fixtures (independent of the crate's
//! encoder), gzip, and a bounded HTTP/1.1 responder on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use mnist::{sha256, Compression, Images, Labels, MnistFile, Pins};

/// IDX image bytes built by hand: magic 0x00000803 then big-endian dims.
pub fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for dim in [count, rows, cols] {
        out.extend_from_slice(&dim.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// IDX label bytes built by hand: magic 0x00000801 then the count.
pub fn idx_labels(count: u32, labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(labels);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A tiny stand-in for MNIST: 3 train and 2 test images of 2x3 pixels.
pub struct Fixture {
    pub train_images: Images,
    pub train_labels: Labels,
    pub test_images: Images,
    pub test_labels: Labels,
}

impl Fixture {
    pub fn new() -> Self {
        let images = |count: usize, seed: u8| Images {
            count,
            rows: 2,
            cols: 3,
            pixels: (0..count * 6)
                .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
                .collect(),
        };
        Fixture {
            train_images: images(3, 1),
            train_labels: Labels {
                labels: vec![5, 0, 9],
            },
            test_images: images(2, 200),
            test_labels: Labels { labels: vec![7, 2] },
        }
    }

    pub fn raw(&self, file: MnistFile) -> Vec<u8> {
        let images =
            |i: &Images| idx_images(i.count as u32, i.rows as u32, i.cols as u32, &i.pixels);
        let labels = |l: &Labels| idx_labels(l.labels.len() as u32, &l.labels);
        match file {
            MnistFile::TrainImages => images(&self.train_images),
            MnistFile::TrainLabels => labels(&self.train_labels),
            MnistFile::TestImages => images(&self.test_images),
            MnistFile::TestLabels => labels(&self.test_labels),
        }
    }

    pub fn gz(&self, file: MnistFile) -> Vec<u8> {
        gzip(&self.raw(file))
    }

    pub fn pins(&self) -> Pins {
        Pins {
            train_images: sha256(&self.raw(MnistFile::TrainImages)),
            train_labels: sha256(&self.raw(MnistFile::TrainLabels)),
            test_images: sha256(&self.raw(MnistFile::TestImages)),
            test_labels: sha256(&self.raw(MnistFile::TestLabels)),
        }
    }

    /// Writes the four files into `dir`, raw under canonical names or gzipped under `.gz` names.
    pub fn write_dir(&self, dir: &Path, compression: Compression) {
        for file in MnistFile::ALL {
            match compression {
                Compression::Gzip => std::fs::write(dir.join(file.gz_name()), self.gz(file)),
                Compression::Raw => std::fs::write(dir.join(file.canonical_name()), self.raw(file)),
            }
            .unwrap();
        }
    }
}

/// What the test server answers for one path.
#[derive(Clone)]
pub enum Reply {
    Body(Vec<u8>),
    /// Promises the whole body in Content-Length, sends `sent` bytes, closes.
    CutShort {
        body: Vec<u8>,
        sent: usize,
    },
}

/// A minimal HTTP/1.1 GET responder on 127.0.0.1; unknown paths get 404.
/// It serves at most `max_requests`, then stops; `finish` stops it early.
pub struct TestServer {
    pub base: String,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<String>>,
}

impl TestServer {
    pub fn start(routes: Vec<(String, Reply)>, max_requests: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut served = Vec::new();
            while served.len() < max_requests
                && !stop_flag.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                match listener.accept() {
                    Ok((stream, _)) => served.push(answer(stream, &routes)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept failed: {e}"),
                }
            }
            served
        });
        TestServer { base, stop, handle }
    }

    /// Stops the server and returns the request paths it served, in order.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn answer(mut stream: TcpStream, routes: &[(String, Reply)]) -> String {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let header = |status: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    };
    match routes
        .iter()
        .find(|(route, _)| *route == path)
        .map(|(_, reply)| reply)
    {
        Some(Reply::Body(body)) => {
            stream
                .write_all(header("200 OK", body.len()).as_bytes())
                .unwrap();
            stream.write_all(body).unwrap();
        }
        Some(Reply::CutShort { body, sent }) => {
            stream
                .write_all(header("200 OK", body.len()).as_bytes())
                .unwrap();
            stream.write_all(&body[..*sent]).unwrap();
        }
        None => {
            let body = b"not found";
            stream
                .write_all(header("404 Not Found", body.len()).as_bytes())
                .unwrap();
            stream.write_all(body).unwrap();
        }
    }
    let _ = stream.flush();
    path
}

/// Routes serving `fixture` gzipped under `prefix` (e.g. "/good/").
pub fn mirror_routes(fixture: &Fixture, prefix: &str) -> Vec<(String, Reply)> {
    MnistFile::ALL
        .iter()
        .map(|&f| {
            (
                format!("{prefix}{}", f.gz_name()),
                Reply::Body(fixture.gz(f)),
            )
        })
        .collect()
}
