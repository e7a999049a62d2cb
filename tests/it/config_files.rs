//! The shipped config files parse, and broken configs are reported with their keys and lines.

use std::path::Path;
use std::process::Command;

use s3warden::config::{AwsCredentials, Config, ConfigError, Environment};

/// The default store's keys, read from the config's sources.
fn aws(c: &Config) -> &AwsCredentials {
    c.secrets.aws["s3"].keys().expect("keys from the config")
}

fn config_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                let text = std::fs::read_to_string(&path).unwrap();
                Config::parse(
                    &text,
                    path.parent().unwrap(),
                    &Environment::default(),
                    &s3warden::check_config,
                )
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
            Some("json") => {
                let text = std::fs::read_to_string(&path).unwrap();
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
            _ => {}
        }
    }
    assert!(seen >= 3, "example, demo and IAM policy");
}

#[test]
fn the_example_documents_every_key_with_its_default() {
    // Every section and key the example sets is accepted, and the example sets the defaults:
    // parsing it gives the same values as parsing nothing for sections it only documents.
    let text = std::fs::read_to_string(config_dir().join("s3warden.example.toml")).unwrap();
    let example = Config::parse(
        &text,
        &config_dir(),
        &Environment::default(),
        &s3warden::check_config,
    )
    .unwrap();
    let defaults = Config::default();
    assert_eq!(example.cache.capacity, defaults.cache.capacity);
    assert_eq!(example.cache.ttl, defaults.cache.ttl);
    assert_eq!(
        example.server.max_connections,
        defaults.server.max_connections
    );
    assert_eq!(
        example.server.max_header_size,
        defaults.server.max_header_size
    );
    assert_eq!(example.signing.window, defaults.signing.window);
    assert_eq!(example.upload.max_size, defaults.upload.max_size);
    assert_eq!(example.s3.retries, defaults.s3.retries);
    assert_eq!(example.auth.jwks_cooldown, defaults.auth.jwks_cooldown);
    assert_eq!(
        example.auth.token_cache_entries,
        defaults.auth.token_cache_entries
    );
}

const MINIMAL: &str = r#"
[s3]
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"

[buckets.files]
bucket = "my-bucket"

[[rules]]
bucket = "files"
prefix = "public/"
allow = "public"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("/nonexistent"),
        &Environment::default(),
        &s3warden::check_config,
    )
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(|p| p.to_string()).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn a_minimal_config_is_enough() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
    assert_eq!(c.public_url(), "http://localhost:8080");
    for (listen, url) in [
        ("[::]:8080", "http://localhost:8080"),
        ("127.0.0.2:81", "http://127.0.0.2:81"),
        ("[::1]:8443", "http://[::1]:8443"),
    ] {
        let text = format!("[server]\nlisten = [\"{listen}\"]\n{MINIMAL}");
        assert_eq!(parse(&text).unwrap().public_url(), url);
    }
}

#[test]
fn endpoint_and_region_come_from_the_environment() {
    let text = MINIMAL.replace(
        "endpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\n",
        "",
    );
    let env = Environment::from_pairs([("AWS_REGION", "eu-west-1")]);
    let c = Config::parse(&text, Path::new("."), &env, &s3warden::check_config).unwrap();
    assert_eq!(
        c.s3.endpoint.as_deref(),
        Some("https://s3.eu-west-1.amazonaws.com")
    );
    let env = Environment::from_pairs([
        ("AWS_REGION", "x"),
        ("AWS_ENDPOINT_URL_S3", "http://minio:9000"),
    ]);
    let c = Config::parse(&text, Path::new("."), &env, &s3warden::check_config).unwrap();
    assert_eq!(c.s3.endpoint.as_deref(), Some("http://minio:9000"));
    assert!(problems(&text).iter().any(|p| p.contains("s3.region")));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_line() {
    let e = parse(&format!("{MINIMAL}\n[cache]\ncapasity = \"1MiB\"\n")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("capasity") && text.contains("line"), "{text}");

    let e = parse(&format!("{MINIMAL}\n[cache]\nttl = \"soon\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid duration") && e.contains("ttl"), "{e}");

    let e = parse(&format!("{MINIMAL}\n[cache]\ncapacity = \"lots\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid size"), "{e}");

    let bad = format!(
        "{MINIMAL}\n[cache]\ncapacity = \"1MiB\"\nmax_object_size = \"2MiB\"\nttl = \"0s\"\n\n\
         [[rules]]\nbucket = \"nope\"\nprefix = \"users/{{user}}/\"\nallow = \"everyone\"\n"
    );
    let found = problems(&bad);
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    assert!(has("cache.max_object_size"), "{found:?}");
    assert!(has("cache.ttl"), "{found:?}");
    assert!(has("rules[1].bucket"), "{found:?}");
    assert!(has("rules[1].allow"), "{found:?}");
    assert!(has("rules[1].prefix"), "{found:?}");
    // Every one of them knows its line.
    let line_of_ttl = bad.lines().position(|l| l.starts_with("ttl")).unwrap() + 1;
    assert!(has(&format!("line {line_of_ttl}: cache.ttl")), "{found:?}");
}

#[test]
fn missing_secret_files_are_reported_when_loading() {
    let text = format!("{MINIMAL}\n[auth]\nhmac_secret_file = \"missing-secret\"\n");
    let env = Environment::from_pairs([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    let e = Config::from_toml(
        &text,
        Path::new("/nonexistent"),
        &env,
        &s3warden::check_config,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("auth.hmac_secret_file") && e.contains("missing-secret"),
        "{e}"
    );
    // No keys configured anywhere: the AWS default chain provides them at run time.
    let c = Config::from_toml(
        MINIMAL,
        Path::new("."),
        &Environment::default(),
        &s3warden::check_config,
    )
    .unwrap();
    assert!(matches!(
        c.secrets.aws["s3"],
        s3warden::config::AwsSource::DefaultChain { profile: None }
    ));
    // Half a key pair in the environment is a problem, not a fall-through to the chain.
    let e = Config::from_toml(
        MINIMAL,
        Path::new("."),
        &Environment::from_pairs([("AWS_ACCESS_KEY_ID", "a")]),
        &s3warden::check_config,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("AWS_SECRET_ACCESS_KEY: incomplete S3 credentials in the environment"),
        "{e}"
    );
    assert!(!e.contains("access_key_id_file"), "{e}");
}

#[test]
fn short_hmac_secrets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "too-short\n").unwrap();
    let text = format!("{MINIMAL}\n[auth]\nhmac_secret_file = \"short\"\n");
    let env = Environment::from_pairs([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    let e = Config::from_toml(&text, dir.path(), &env, &s3warden::check_config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("9 bytes; at least 32"), "{e}");
}

#[test]
fn check_config_exits_non_zero_and_prints_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let bad = format!(
        "{MINIMAL}\n[cache]\nttl = \"0s\"\nnegative_ttl = \"1s\"\n\n[signing]\nwindow = \"8d\"\n"
    );
    let ttl_line = bad.lines().position(|l| l.starts_with("ttl")).unwrap() + 1;
    std::fs::write(&path, &bad).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_s3warden"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env("AWS_ACCESS_KEY_ID", "a")
            .env("AWS_SECRET_ACCESS_KEY", "b")
            .output()
            .unwrap()
    };
    let out = check();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cache.ttl") && stderr.contains("signing.window"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("line {ttl_line}: cache.ttl")),
        "{stderr}"
    );

    std::fs::write(&path, MINIMAL).unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It says where the S3 keys come from (never the keys).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("s3: S3 credentials from environment\n"),
        "{stdout}"
    );
}

#[test]
fn s3_credentials_from_files_environment_or_systemd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id"), "FILEID\n").unwrap();
    std::fs::write(dir.path().join("secret"), "filesecret\n").unwrap();
    std::fs::write(dir.path().join("token"), "filetoken").unwrap();
    let with_files = MINIMAL.replace(
        "region = \"us-east-1\"\n",
        "region = \"us-east-1\"\naccess_key_id_file = \"id\"\nsecret_access_key_file = \"secret\"\nsession_token_file = \"token\"\n",
    );
    let env = Environment::from_pairs([
        ("AWS_ACCESS_KEY_ID", "ENVID"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
    ]);
    let c = Config::from_toml(&with_files, dir.path(), &env, &s3warden::check_config).unwrap();
    assert_eq!(aws(&c).access_key_id, "FILEID");
    assert_eq!(aws(&c).secret_access_key, "filesecret");
    assert_eq!(aws(&c).session_token.as_deref(), Some("filetoken"));

    let c = Config::from_toml(MINIMAL, dir.path(), &env, &s3warden::check_config).unwrap();
    assert_eq!(aws(&c).access_key_id, "ENVID");
    assert_eq!(aws(&c).session_token, None);

    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("aws_access_key_id"), "CREDID").unwrap();
    std::fs::write(creds.join("aws_secret_access_key"), "credsecret").unwrap();
    let env = Environment::from_pairs([("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    let c = Config::from_toml(MINIMAL, dir.path(), &env, &s3warden::check_config).unwrap();
    assert_eq!(aws(&c).access_key_id, "CREDID");
    assert_eq!(aws(&c).secret_access_key, "credsecret");
}

#[test]
fn rule_acls_are_checked_against_the_default_acl() {
    let rule = "\n[[rules]]\nbucket = \"files\"\nprefix = \"up/\"\nmethods = [\"PUT\"]\nallow = \"authenticated\"\n";
    let text = format!("{MINIMAL}{rule}\n[upload]\ndefault_acl = \"public-read\"\n");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("rules[1].acls") && p.contains("public-read")),
        "{found:?}"
    );
    let text = format!(
        "{MINIMAL}{rule}acls = [\"private\", \"public-read\"]\n\n[upload]\ndefault_acl = \"public-read\"\n"
    );
    assert_eq!(problems(&text), Vec::<String>::new());
    let text = format!("{MINIMAL}{rule}acls = [\"none\"]\n");
    assert!(problems(&text).iter().any(|p| p.contains("rules[1].acls")));
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("line ") && p.contains("admin.listen")),
        "{found:?}"
    );
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"t\"\n");
    assert_eq!(problems(&text), Vec::<String>::new());
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"[::1]:9901\"\n");
    assert_eq!(problems(&text), Vec::<String>::new());
}

#[test]
fn a_jwks_url_over_plain_http_must_be_loopback() {
    let with = |url: &str| format!("{MINIMAL}\n[auth]\njwks_url = \"{url}\"\n");
    let found = problems(&with("http://idp.example.com/.well-known/jwks.json"));
    assert!(
        found.iter().any(|p| p.contains("auth.jwks_url")),
        "{found:?}"
    );
    for ok in [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8081/jwks.json",
        "http://localhost:8081/jwks.json",
        "http://[::1]:8081/jwks.json",
    ] {
        assert_eq!(problems(&with(ok)), Vec::<String>::new(), "{ok}");
    }
}

#[test]
fn a_key_pair_never_takes_a_session_token_from_another_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id"), "FILEID").unwrap();
    std::fs::write(dir.path().join("secret"), "filesecret").unwrap();
    let with_files = MINIMAL.replace(
        "region = \"us-east-1\"\n",
        "region = \"us-east-1\"\naccess_key_id_file = \"id\"\nsecret_access_key_file = \"secret\"\n",
    );
    // A stale token in the environment does not pair with keys from files.
    let env = Environment::from_pairs([("AWS_SESSION_TOKEN", "stale-env-token")]);
    let c = Config::from_toml(&with_files, dir.path(), &env, &s3warden::check_config).unwrap();
    assert_eq!(aws(&c).access_key_id, "FILEID");
    assert_eq!(aws(&c).session_token, None);
    // Nor with keys from systemd credentials.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("aws_access_key_id"), "CREDID").unwrap();
    std::fs::write(creds.join("aws_secret_access_key"), "credsecret").unwrap();
    let env = Environment::from_pairs([
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ("AWS_SESSION_TOKEN", "stale-env-token"),
    ]);
    let c = Config::from_toml(MINIMAL, dir.path(), &env, &s3warden::check_config).unwrap();
    assert_eq!(aws(&c).access_key_id, "CREDID");
    assert_eq!(aws(&c).session_token, None);
    // Half a pair of key files is a problem, not a fall-through to the environment.
    let half = MINIMAL.replace(
        "region = \"us-east-1\"\n",
        "region = \"us-east-1\"\naccess_key_id_file = \"id\"\n",
    );
    let env = Environment::from_pairs([("AWS_ACCESS_KEY_ID", "E"), ("AWS_SECRET_ACCESS_KEY", "e")]);
    let e = Config::from_toml(&half, dir.path(), &env, &s3warden::check_config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3.secret_access_key_file"), "{e}");
}

#[test]
fn log_levels_that_would_silence_the_daemon_are_refused() {
    let with = |level: &str| format!("{MINIMAL}\n[log]\nlevel = \"{level}\"\n");
    for bad in ["verbose", "info,verbose", "s3warden=loud", ""] {
        let found = problems(&with(bad));
        assert!(
            found.iter().any(|p| p.contains("log.level")),
            "{bad:?}: {found:?}"
        );
    }
    for good in [
        "info",
        "WARN",
        "off",
        "info,access=warn",
        "s3warden=debug,info",
    ] {
        assert_eq!(problems(&with(good)), Vec::<String>::new(), "{good:?}");
    }
}

#[test]
fn the_config_path_comes_from_dash_c_or_s3warden_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let check = |args: &[&str], env: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_s3warden"));
        command
            .arg("check-config")
            .args(args)
            .env_remove("S3WARDEN_CONFIG")
            .env("AWS_ACCESS_KEY_ID", "a")
            .env("AWS_SECRET_ACCESS_KEY", "b");
        if let Some(env) = env {
            command.env("S3WARDEN_CONFIG", env);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let ok = format!("{}: ok", path.display());
    let (success, stdout) = check(&["-c", path.to_str().unwrap()], None);
    assert!(success && stdout.contains(&ok), "{stdout}");
    let (success, stdout) = check(&[], Some(&path));
    assert!(success && stdout.contains(&ok), "{stdout}");
    // The flag wins over the variable.
    let (success, _) = check(&["-c", "/nonexistent.toml"], Some(&path));
    assert!(!success);
}

#[test]
fn trusted_proxies_must_be_addresses_or_networks() {
    let with = |list: &str| format!("{MINIMAL}\n[server]\ntrusted_proxies = {list}\n");
    let found = problems(&with("[\"10.0.0.0/8\", \"lb.example.com\"]"));
    assert!(
        found
            .iter()
            .any(|p| p.contains("server.trusted_proxies[1]")),
        "{found:?}"
    );
    let ok = "[\"10.0.0.0/8\", \"192.0.2.10\", \"2001:db8::/32\", \"::1\"]";
    assert_eq!(problems(&with(ok)), Vec::<String>::new());
}

#[test]
fn an_endpoint_that_contradicts_the_region_or_holds_keys_is_refused() {
    let with = |endpoint: &str, region: &str| {
        problems(&MINIMAL.replace(
            "endpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"",
            &format!("endpoint = \"{endpoint}\"\nregion = \"{region}\""),
        ))
    };
    for endpoint in [
        "https://s3.eu-west-1.amazonaws.com",
        "https://s3-eu-west-1.amazonaws.com",
        "https://s3.dualstack.eu-west-1.amazonaws.com",
        "https://s3-fips.eu-west-1.amazonaws.com",
    ] {
        let found = with(endpoint, "us-east-1");
        assert!(
            found
                .iter()
                .any(|p| p.contains("s3.region") && p.contains("\"eu-west-1\"")),
            "{endpoint}: {found:?}"
        );
        assert_eq!(
            with(endpoint, "eu-west-1"),
            Vec::<String>::new(),
            "{endpoint}"
        );
    }
    // Endpoints that name no region say nothing about it.
    for endpoint in [
        "https://s3.amazonaws.com",
        "https://s3-external-1.amazonaws.com",
        "http://10.0.0.5:9000",
        "https://abc.r2.cloudflarestorage.com",
    ] {
        assert_eq!(with(endpoint, "auto"), Vec::<String>::new(), "{endpoint}");
    }
    let found = with("https://AKIA:secret@minio.internal:9000", "us-east-1");
    assert!(
        found
            .iter()
            .any(|p| p.contains("s3.endpoint") && p.contains("user or password")),
        "{found:?}"
    );
}

#[test]
fn legacy_bucket_names_are_served_path_style() {
    let legacy = MINIMAL
        .replace("bucket = \"my-bucket\"", "bucket = \"My_Legacy_Bucket\"")
        .replace(
            "http://127.0.0.1:9000",
            "https://s3.us-east-1.amazonaws.com",
        );
    let c = parse(&legacy).unwrap();
    let object = s3warden::s3::S3Object {
        store: "s3".into(),
        bucket: c.buckets["files"].bucket.as_str().into(),
        key: "a.png".into(),
    };
    let url = s3warden::s3::Addresser::new(&c.s3).object_url(&object);
    assert_eq!(
        url.as_str(),
        "https://s3.us-east-1.amazonaws.com/My_Legacy_Bucket/a.png"
    );
    // Virtual-hosted addressing cannot reach it, and says so.
    let found = problems(&legacy.replace("[s3]\n", "[s3]\naddressing = \"virtual\"\n"));
    assert!(
        found
            .iter()
            .any(|p| p.contains("s3.addressing") && p.contains("not a DNS name")),
        "{found:?}"
    );
    for bad in ["ab", "-abc", "abc-", "a b c", "ab/c", &"a".repeat(256)] {
        let text = MINIMAL.replace("bucket = \"my-bucket\"", &format!("bucket = \"{bad}\""));
        assert!(
            problems(&text)
                .iter()
                .any(|p| p.contains("buckets.files.bucket")),
            "{bad}"
        );
    }
}
