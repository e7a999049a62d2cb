//! Tokens for the benchmarks, signed with the test keys: prints `HS256 RS256 ES256` tokens, one
//! per line, valid for two hours, for subject `bench`.
//!
//! `cargo run --release --example tokens -- HMAC_SECRET`

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

fn main() {
    let secret = std::env::args().nth(1).expect("HMAC secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "sub": "bench", "exp": now + 7200, "iat": now });
    let fixture = |name: &str| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .expect("fixture")
    };
    let keys = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&fixture("ec_private.pem")).unwrap(),
        ),
    ];
    for (alg, key) in keys {
        println!("{}", encode(&Header::new(alg), &claims, &key).unwrap());
    }
}
