//! Loading the layered configuration through the library API, with an explicit environment.

use std::path::{Path, PathBuf};

use imagegen_mcp::config::{CliOverrides, ConfigError, LoadedConfig, ProviderConfig};
use secrecy::ExposeSecret;

/// A key that must never appear in any message.
const SENTINEL: &str = "sk-SENTINEL-do-not-leak-0123456789abcdef";

/// A scratch home (`home/`) and working directory (`work/`), with nothing else in the environment.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let home = self.path("home");
        let mut env = vec![
            ("HOME".to_string(), home.display().to_string()),
            (
                "XDG_CONFIG_HOME".to_string(),
                home.join(".config").display().to_string(),
            ),
            (
                "XDG_DATA_HOME".to_string(),
                home.join(".local/share").display().to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn load_cli(
        &self,
        cli: &CliOverrides,
        extra: &[(&str, &str)],
    ) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::load_from(cli, self.env(extra), &self.path("work"))
    }

    fn load(&self, extra: &[(&str, &str)]) -> Result<LoadedConfig, ConfigError> {
        self.load_cli(&CliOverrides::default(), extra)
    }

    /// Loads with `toml` as ./imagegen.toml.
    fn load_file(&self, toml: &str, extra: &[(&str, &str)]) -> Result<LoadedConfig, ConfigError> {
        self.write("work/imagegen.toml", toml);
        self.load(extra)
    }
}

/// An OpenAI provider's settings in one flat view, whichever part of its table holds each.
struct OpenAi {
    base_url: String,
    organization: Option<String>,
    project: Option<String>,
    model: String,
    timeout_s: u64,
    max_retries: u32,
    api_key_file: Option<std::path::PathBuf>,
    api_key: Option<secrecy::SecretString>,
}

fn view(c: &ProviderConfig) -> OpenAi {
    assert_eq!(c.kind(), "openai");
    let flat = serde_json::to_value(c).unwrap();
    let text = |k: &str| flat[k].as_str().map(String::from);
    OpenAi {
        base_url: text("base_url").unwrap(),
        organization: text("organization"),
        project: text("project"),
        model: c.model().to_string(),
        timeout_s: c.http.timeout_s,
        max_retries: c.http.max_retries,
        api_key_file: c.common.api_key_file.clone(),
        api_key: c.common.api_key.clone(),
    }
}

fn openai(loaded: &LoadedConfig, name: &str) -> OpenAi {
    view(&loaded.config.providers[name])
}

fn key(loaded: &LoadedConfig, name: &str) -> (String, String) {
    let k = loaded.api_key(name).expect("a key");
    (k.key.expose_secret().to_string(), k.source.clone())
}

fn err(result: Result<LoadedConfig, ConfigError>) -> String {
    result.expect_err("should fail").to_string()
}

#[test]
fn with_nothing_configured_the_mock_is_the_default_and_images_go_to_the_data_dir() {
    let sb = Sandbox::new();
    let loaded = sb.load(&[]).unwrap();
    assert_eq!(loaded.default_provider(), "mock");
    assert_eq!(loaded.config.providers["mock"].kind(), "mock");
    assert_eq!(
        loaded.output_dir(),
        sb.path("home/.local/share/imagegen-mcp/images")
    );
    assert_eq!(loaded.file, None);
    assert!(loaded.api_key("mock").is_none());
    assert_eq!(
        loaded.notices(),
        vec!["no provider configured: using the offline mock provider (set OPENAI_API_KEY or write a config file to use OpenAI)"]
    );
    let show = loaded.show();
    assert!(show.contains("none found; searched:"), "{show}");
    assert!(
        show.contains(&sb.path("work/imagegen.toml").display().to_string()),
        "{show}"
    );
    assert!(
        show.contains("default_provider = \"mock\"  # default"),
        "{show}"
    );
}

#[test]
fn openai_api_key_alone_makes_openai_the_default() {
    let sb = Sandbox::new();
    let loaded = sb
        .load(&[
            ("OPENAI_API_KEY", "12345"),
            ("OPENAI_ORG_ID", "org-1"),
            ("OPENAI_PROJECT_ID", "7"),
        ])
        .unwrap();
    assert_eq!(loaded.default_provider(), "openai");
    // A key that looks like a number stays a string.
    assert_eq!(
        key(&loaded, "openai"),
        ("12345".into(), "env OPENAI_API_KEY".into())
    );
    let c = openai(&loaded, "openai");
    assert_eq!(c.organization.as_deref(), Some("org-1"));
    assert_eq!(c.project.as_deref(), Some("7"));
    assert_eq!(c.base_url, "https://api.openai.com/v1");
    assert!(
        loaded.config.providers.contains_key("mock"),
        "the mock stays available"
    );
    assert!(loaded.notices().is_empty(), "{:?}", loaded.notices());
}

#[test]
fn empty_variables_count_as_unset() {
    let sb = Sandbox::new();
    let loaded = sb
        .load(&[("OPENAI_API_KEY", ""), ("IMAGEGEN_DEFAULT_PROVIDER", "")])
        .unwrap();
    assert_eq!(loaded.default_provider(), "mock");
    assert!(!loaded.config.providers.contains_key("openai"));
}

#[test]
fn openai_base_url_is_applied() {
    let sb = Sandbox::new();
    let loaded = sb
        .load(&[("OPENAI_BASE_URL", "http://localhost:8080/v1")])
        .unwrap();
    assert_eq!(
        openai(&loaded, "openai").base_url,
        "http://localhost:8080/v1"
    );
    // Without a key, OpenAI does not become the default.
    assert_eq!(loaded.default_provider(), "mock");
}

#[test]
fn the_file_beats_openai_variables() {
    let sb = Sandbox::new();
    let file = sb.write(
        "work/imagegen.toml",
        "default_provider = \"mock\"\n[providers.openai]\napi_key = \"sk-from-file-0000aaaa\"\nbase_url = \"https://file.example/v1\"\n",
    );
    let loaded = sb
        .load(&[
            ("OPENAI_API_KEY", "sk-from-env-0000bbbb"),
            ("OPENAI_BASE_URL", "https://env.example/v1"),
        ])
        .unwrap();
    assert_eq!(loaded.default_provider(), "mock");
    assert_eq!(
        key(&loaded, "openai"),
        (
            "sk-from-file-0000aaaa".into(),
            format!("file {}", file.display())
        )
    );
    assert_eq!(
        openai(&loaded, "openai").base_url,
        "https://file.example/v1"
    );
    assert_eq!(loaded.file.as_deref(), Some(file.as_path()));
}

#[test]
fn the_file_beats_defaults_and_imagegen_variables_beat_the_file() {
    let sb = Sandbox::new();
    sb.write(
        "work/imagegen.toml",
        "[providers.openai]\nmodel = \"gpt-image-1\"\ntimeout_s = 60\n[output]\ndelivery = \"link\"\n",
    );
    let loaded = sb
        .load(&[
            ("IMAGEGEN_PROVIDERS__OPENAI__MODEL", "gpt-image-2"),
            ("IMAGEGEN_OUTPUT__PREVIEW_BUDGET_BYTES", "1000"),
            ("IMAGEGEN_DEFAULT_PROVIDER", "openai"),
        ])
        .unwrap();
    let c = openai(&loaded, "openai");
    assert_eq!(c.model, "gpt-image-2");
    assert_eq!(c.timeout_s, 60);
    assert_eq!(c.max_retries, 2, "serde default");
    assert_eq!(
        loaded.config.output.delivery,
        imagegen_mcp::config::Delivery::Link
    );
    assert_eq!(loaded.config.output.preview_budget_bytes, 1000);
    assert_eq!(loaded.default_provider(), "openai");
}

#[test]
fn flags_beat_imagegen_variables() {
    let sb = Sandbox::new();
    let cli = CliOverrides {
        provider: Some("mock".into()),
        output_dir: Some(sb.path("flag-out")),
        ..CliOverrides::default()
    };
    let env_dir = sb.path("env-out").display().to_string();
    let loaded = sb
        .load_cli(
            &cli,
            &[
                ("OPENAI_API_KEY", "sk-x"),
                ("IMAGEGEN_DEFAULT_PROVIDER", "openai"),
                ("IMAGEGEN_OUTPUT__DIR", &env_dir),
            ],
        )
        .unwrap();
    assert_eq!(loaded.default_provider(), "mock");
    assert_eq!(loaded.output_dir(), sb.path("flag-out"));
    let show = loaded.show();
    assert!(
        show.contains("default_provider = \"mock\"  # flag --provider"),
        "{show}"
    );
    assert!(show.contains("  # flag --out"), "{show}");

    let loaded = sb.load(&[("IMAGEGEN_OUTPUT__DIR", &env_dir)]).unwrap();
    assert_eq!(loaded.output_dir(), sb.path("env-out"));
}

#[test]
fn a_relative_output_dir_in_a_file_is_relative_to_the_file() {
    let sb = Sandbox::new();
    let file = sb.write("cfg/imagegen.toml", "[output]\ndir = \"./images\"\n");
    let cli = CliOverrides {
        config: Some(file),
        ..CliOverrides::default()
    };
    let loaded = sb.load_cli(&cli, &[]).unwrap();
    assert_eq!(loaded.output_dir(), sb.path("cfg/images"));

    sb.write("cfg/imagegen.toml", "[output]\ndir = \"~/pics\"\n");
    let loaded = sb.load_cli(&cli, &[]).unwrap();
    assert_eq!(loaded.output_dir(), sb.path("home/pics"));
}

#[test]
fn a_relative_output_dir_from_the_environment_is_refused() {
    let sb = Sandbox::new();
    let msg = err(sb.load(&[("IMAGEGEN_OUTPUT__DIR", "images")]));
    assert!(
        msg.contains("IMAGEGEN_OUTPUT__DIR") && msg.contains("absolute"),
        "{msg}"
    );
}

#[test]
fn a_named_file_must_exist() {
    let sb = Sandbox::new();
    let missing = sb.path("nope/imagegen.toml");
    let cli = CliOverrides {
        config: Some(missing.clone()),
        ..CliOverrides::default()
    };
    let msg = err(sb.load_cli(&cli, &[]));
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("--config"),
        "{msg}"
    );

    let msg = err(sb.load(&[("IMAGEGEN_CONFIG", missing.to_str().unwrap())]));
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("IMAGEGEN_CONFIG"),
        "{msg}"
    );
}

#[test]
fn imagegen_config_names_the_file() {
    let sb = Sandbox::new();
    let file = sb.write(
        "elsewhere.toml",
        "default_provider = \"offline\"\n[providers.offline]\nkind = \"mock\"\n",
    );
    sb.write("work/imagegen.toml", "this is not read");
    let loaded = sb
        .load(&[("IMAGEGEN_CONFIG", file.to_str().unwrap())])
        .unwrap();
    assert_eq!(loaded.default_provider(), "offline");
    assert_eq!(loaded.file, Some(file));
}

#[test]
fn imagegen_toml_in_the_working_directory_comes_before_the_user_config() {
    let sb = Sandbox::new();
    sb.write(
        "home/.config/imagegen-mcp/config.toml",
        "default_provider = \"xdg\"\n[providers.xdg]\nkind = \"mock\"\n",
    );
    let local = sb.write(
        "work/imagegen.toml",
        "default_provider = \"local\"\n[providers.local]\nkind = \"mock\"\n",
    );
    let loaded = sb.load(&[]).unwrap();
    assert_eq!(loaded.default_provider(), "local");
    assert_eq!(loaded.file, Some(local));
}

#[test]
fn the_user_config_is_found_under_xdg_config_home_or_home() {
    let sb = Sandbox::new();
    let xdg = sb.write(
        "home/.config/imagegen-mcp/config.toml",
        "default_provider = \"xdg\"\n[providers.xdg]\nkind = \"mock\"\n",
    );
    let loaded = sb.load(&[]).unwrap();
    assert_eq!(loaded.default_provider(), "xdg");
    assert_eq!(loaded.file, Some(xdg));

    let custom = sb.write(
        "xdg/imagegen-mcp/config.toml",
        "default_provider = \"custom\"\n[providers.custom]\nkind = \"mock\"\n",
    );
    let env = vec![
        ("HOME".to_string(), sb.path("home").display().to_string()),
        (
            "XDG_CONFIG_HOME".to_string(),
            sb.path("xdg").display().to_string(),
        ),
        (
            "XDG_DATA_HOME".to_string(),
            sb.path("data").display().to_string(),
        ),
    ];
    let loaded = LoadedConfig::load_from(&CliOverrides::default(), env, &sb.path("work")).unwrap();
    assert_eq!(loaded.file, Some(custom));

    // Without XDG_CONFIG_HOME: ~/.config.
    let env = vec![
        ("HOME".to_string(), sb.path("home").display().to_string()),
        (
            "XDG_DATA_HOME".to_string(),
            sb.path("data").display().to_string(),
        ),
    ];
    let loaded = LoadedConfig::load_from(&CliOverrides::default(), env, &sb.path("work")).unwrap();
    assert_eq!(loaded.default_provider(), "xdg");
}

#[test]
fn unknown_keys_name_the_key_the_file_and_the_valid_keys() {
    let sb = Sandbox::new();
    let msg = err(sb.load_file("[providers.openai]\nmodle = \"gpt-image-2\"\n", &[]));
    assert!(msg.contains("`providers.openai.modle`"), "{msg}");
    assert!(
        msg.contains(&sb.path("work/imagegen.toml").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("kind") && msg.contains("model") && msg.contains("timeout_s"),
        "{msg}"
    );

    let msg = err(sb.load_file("default_provder = \"mock\"\n", &[]));
    assert!(
        msg.contains("`default_provder`") && msg.contains("default_provider"),
        "{msg}"
    );

    let msg = err(sb.load_file("# nothing\n", &[("IMAGEGEN_OUTPUT__DIRR", "/x")]));
    assert!(
        msg.contains("`output.dirr`") && msg.contains("env IMAGEGEN_OUTPUT__DIRR"),
        "{msg}"
    );
}

#[test]
fn non_configuration_imagegen_variables_are_left_alone() {
    let sb = Sandbox::new();
    let loaded = sb
        .load(&[("IMAGEGEN_LOG", "debug"), ("IMAGEGEN_SOMETHING", "1")])
        .unwrap();
    let notices = loaded.notices();
    assert!(
        notices.iter().any(|n| n.contains("IMAGEGEN_SOMETHING")),
        "{notices:?}"
    );
    assert!(
        !notices.iter().any(|n| n.contains("IMAGEGEN_LOG:")),
        "{notices:?}"
    );
}

#[test]
fn api_key_file_is_read_trimmed_and_relative_to_the_file() {
    let sb = Sandbox::new();
    sb.write("cfg/secrets/openai", "  sk-from-file-0000abcd\n");
    let file = sb.write(
        "cfg/imagegen.toml",
        "[providers.openai]\napi_key_file = \"secrets/openai\"\n",
    );
    let cli = CliOverrides {
        config: Some(file),
        ..CliOverrides::default()
    };
    let loaded = sb.load_cli(&cli, &[]).unwrap();
    let secret = sb.path("cfg/secrets/openai");
    assert_eq!(
        key(&loaded, "openai"),
        (
            "sk-from-file-0000abcd".into(),
            format!("api_key_file {}", secret.display())
        )
    );
    let c = openai(&loaded, "openai");
    assert_eq!(c.api_key_file.as_deref(), Some(secret.as_path()));
    assert_eq!(c.api_key.unwrap().expose_secret(), "sk-from-file-0000abcd");
    let show = loaded.show();
    assert!(
        show.contains(&format!(
            "api_key = \"sk-…abcd\"  # api_key_file {}",
            secret.display()
        )),
        "{show}"
    );
}

#[test]
fn api_key_file_problems_name_the_provider_field_and_path() {
    let sb = Sandbox::new();
    let msg = err(sb.load_file(
        "[providers.work]\nkind = \"openai\"\napi_key_file = \"missing\"\n",
        &[],
    ));
    let path = sb.path("work/missing").display().to_string();
    assert!(
        msg.contains("providers.work.api_key_file") && msg.contains(&path),
        "{msg}"
    );

    sb.write("work/empty", " \n");
    let msg = err(sb.load_file(
        "[providers.work]\nkind = \"openai\"\napi_key_file = \"empty\"\n",
        &[],
    ));
    assert!(
        msg.contains("providers.work.api_key_file") && msg.contains("empty"),
        "{msg}"
    );

    let msg = err(sb.load(&[("IMAGEGEN_PROVIDERS__OPENAI__API_KEY_FILE", "relative")]));
    assert!(msg.contains("absolute"), "{msg}");
}

#[test]
fn every_key_setting_in_one_place_joins_one_pool_without_duplicates() {
    let sb = Sandbox::new();
    sb.write("work/key", "sk-from-file-0000aaaa\n");
    sb.write("work/more/b", "sk-from-files-0000bbbb");
    sb.write("work/more/dup", SENTINEL);
    let loaded = sb
        .load_file(
            &format!(
                "[providers.openai]\napi_key = \"{SENTINEL}\"\napi_key_file = \"key\"\n\
                 api_keys = [\"sk-list-0000cccc\", \"{SENTINEL}\"]\n\
                 api_key_files = [\"more/b\", \"more/dup\"]\n"
            ),
            &[],
        )
        .unwrap();
    let keys: Vec<(String, String)> = loaded
        .api_keys("openai")
        .iter()
        .map(|k| (k.fingerprint(), k.source.clone()))
        .collect();
    let fingerprints: Vec<&str> = keys.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fingerprints,
        ["sk-…cdef", "sk-…cccc", "sk-…aaaa", "sk-…bbbb"]
    );
    assert!(keys[2].1.starts_with("api_key_file "), "{keys:?}");
    let shown = loaded.show();
    assert!(shown.contains("4 keys, one pool"), "{shown}");
    assert!(!shown.contains("SENTINEL"), "{shown}");
}

#[test]
fn an_api_key_file_in_the_file_beats_openai_api_key() {
    let sb = Sandbox::new();
    sb.write("work/key", "sk-rotated-0000abcd");
    let loaded = sb
        .load_file(
            "[providers.openai]\napi_key_file = \"key\"\n",
            &[("OPENAI_API_KEY", "sk-shell-0000wxyz")],
        )
        .unwrap();
    assert_eq!(key(&loaded, "openai").0, "sk-rotated-0000abcd");
    assert!(
        loaded
            .notices()
            .iter()
            .any(|n| n.contains("ignoring api_key from env OPENAI_API_KEY")),
        "{:?}",
        loaded.notices()
    );
}

#[test]
fn an_imagegen_key_variable_shadowing_the_file_is_noticed() {
    let sb = Sandbox::new();
    let loaded = sb
        .load_file(
            "[providers.openai]\napi_key = \"sk-file-0000abcd\"\n",
            &[("IMAGEGEN_PROVIDERS__OPENAI__API_KEY", "123456789012")],
        )
        .unwrap();
    // Read as a string, although it looks like an integer.
    assert_eq!(
        key(&loaded, "openai"),
        (
            "123456789012".into(),
            "env IMAGEGEN_PROVIDERS__OPENAI__API_KEY".into()
        )
    );
    assert!(
        loaded
            .notices()
            .iter()
            .any(|n| n.contains("overrides the config file's")),
        "{:?}",
        loaded.notices()
    );
}

#[test]
fn the_mock_can_be_disabled() {
    let sb = Sandbox::new();
    let loaded = sb
        .load_file(
            "[providers.mock]\nenabled = false\n[providers.openai]\napi_key = \"sk-0000aaaa\"\n",
            &[],
        )
        .unwrap();
    assert!(!loaded.config.providers["mock"].enabled());
    assert!(loaded.enabled_providers().all(|(n, _)| n != "mock"));
    assert_eq!(
        loaded.default_provider(),
        "openai",
        "the only enabled provider"
    );

    let msg = err(sb.load_file("[providers.mock]\nenabled = false\n", &[]));
    assert!(msg.contains("no provider is enabled"), "{msg}");

    let msg = err(sb.load_file(
        "default_provider = \"mock\"\n[providers.mock]\nenabled = false\n",
        &[],
    ));
    assert!(msg.contains("disabled"), "{msg}");

    // The user's own [providers.mock] may be another kind.
    let loaded = sb
        .load_file("[providers.mock]\nkind = \"openai\"\n", &[])
        .unwrap();
    assert_eq!(loaded.config.providers["mock"].kind(), "openai");
}

#[test]
fn default_provider_must_name_an_enabled_provider() {
    let sb = Sandbox::new();
    let msg = err(sb.load(&[
        ("IMAGEGEN_DEFAULT_PROVIDER", "nope"),
        ("OPENAI_API_KEY", "sk-x"),
    ]));
    assert!(
        msg.contains("`default_provider`") && msg.contains("env IMAGEGEN_DEFAULT_PROVIDER"),
        "{msg}"
    );
    assert!(msg.contains("mock, openai"), "{msg}");
}

#[test]
fn values_are_checked() {
    let sb = Sandbox::new();
    let msg = err(sb.load_file(
        "[providers.offline]\nkind = \"mock\"\nfail_rate = 1.5\n",
        &[],
    ));
    assert!(
        msg.contains("providers.offline.fail_rate") && msg.contains("between"),
        "{msg}"
    );

    let msg = err(sb.load_file(
        "[providers.offline]\nkind = \"mock\"\nfail_with = \"kaboom\"\n",
        &[],
    ));
    assert!(
        msg.contains("providers.offline.fail_with")
            && msg.contains("rate_limited, quota_exhausted"),
        "{msg}"
    );

    let msg = err(sb.load_file(
        "[providers.openai]\nbase_url = \"ftp://example.com\"\n",
        &[],
    ));
    assert!(
        msg.contains("providers.openai.base_url") && msg.contains("http"),
        "{msg}"
    );

    let msg = err(sb.load_file("[defaults]\noutput_compression = 101\n", &[]));
    assert!(msg.contains("defaults.output_compression"), "{msg}");

    let msg = err(sb.load_file("[providers.x]\nmodel = \"m\"\n", &[]));
    assert!(msg.contains("providers.x") && msg.contains("kind"), "{msg}");

    let msg = err(sb.load_file("[providers.x]\nkind = \"dalle\"\n", &[]));
    assert!(
        msg.contains("providers.x.kind") && msg.contains("openai, mock"),
        "{msg}"
    );

    let msg = err(sb.load_file("[models.\"gpt-image-3\"]\nlike = \"nope\"\n", &[]));
    assert!(
        msg.contains("gpt-image-3") && msg.contains("imagegen.toml"),
        "{msg}"
    );

    let msg = err(sb.load_file("[providers.openai]\ntimeout_s = \"soon\"\n", &[]));
    assert!(
        msg.contains("`providers.openai.timeout_s`")
            && msg.contains("expected a non-negative integer, found a string"),
        "{msg}"
    );
}

#[test]
fn model_overrides_reach_the_catalog() {
    let sb = Sandbox::new();
    let loaded = sb
        .load_file(
            "[models.\"gpt-image-3\"]\nlike = \"gpt-image-2\"\nmax_prompt_chars = 64000\n[models.\"dall-e-3\"]\nmax_n = 4\n",
            &[],
        )
        .unwrap();
    let next = loaded.catalog().get("gpt-image-3");
    assert!(next.known);
    assert_eq!(next.max_prompt_chars, 64_000);
    assert_eq!(loaded.catalog().get("dall-e-3").max_n, 4);
    let show = loaded.show();
    assert!(show.contains("[models.gpt-image-3]"), "{show}");
    assert!(show.contains("max_prompt_chars = 64000  # file "), "{show}");
}

#[test]
fn a_provider_s_own_model_entries_apply_to_it_alone_over_the_shared_ones() {
    let sb = Sandbox::new();
    let loaded = sb
        .load_file(
            "[models.\"gpt-image-2\"]\nshutdown_date = \"2027-04-21\"\nmax_n = 4\n\
             [providers.openai]\napi_key = \"sk-test\"\n\
             [providers.openai.models.\"gpt-image-2\"]\nshutdown_date = \"2027-06-30\"\n\
             [providers.mock.models.\"house-style\"]\nlike = \"mock-image-1\"\nmax_n = 2\n",
            &[],
        )
        .unwrap();
    let openai = loaded.provider_catalog("openai").unwrap();
    let mock = loaded.provider_catalog("mock").unwrap();
    // The provider's date wins over `[models]`; the fields it leaves alone come from `[models]`.
    let own = openai.get("gpt-image-2");
    assert_eq!(
        (own.shutdown_date.as_deref(), own.max_n),
        (Some("2027-06-30"), 4)
    );
    let shared = mock.get("gpt-image-2");
    assert_eq!(
        (shared.shutdown_date.as_deref(), shared.max_n),
        (Some("2027-04-21"), 4)
    );
    // A kind's own entries (the mock's model) and a provider's additions stay with them.
    assert!(mock.get("house-style").known && mock.get("mock-image-1").known);
    assert!(!openai.get("house-style").known && !openai.get("mock-image-1").known);
    assert_eq!(
        loaded.catalog().get("gpt-image-2").shutdown_date.as_deref(),
        Some("2027-04-21")
    );

    let broken = err(sb.load_file(
        "[providers.mock.models.\"x\"]\nlike = \"nothing-like-it\"\n",
        &[],
    ));
    assert!(
        broken.contains("providers.mock.models.\"x\".like names `nothing-like-it`")
            && broken.contains("imagegen.toml"),
        "{broken}"
    );
}

#[test]
fn the_old_models_list_is_read_as_offered_models_with_a_warning() {
    let sb = Sandbox::new();
    let loaded = sb
        .load_file(
            "[providers.openai]\napi_key = \"sk-test\"\nmodels = [\"gpt-image-2\"]\n",
            &[],
        )
        .unwrap();
    let common = &loaded.config.providers["openai"].common;
    assert_eq!(common.offered_models, Some(vec!["gpt-image-2".to_string()]));
    assert!(common.models.is_empty());
    let notices = loaded.notices().join("\n");
    assert!(
        notices.contains("providers.openai.models = [...]") && notices.contains("offered_models"),
        "{notices}"
    );
    let renamed = sb
        .load_file(
            "[providers.openai]\napi_key = \"sk-test\"\noffered_models = [\"gpt-image-2\"]\n",
            &[],
        )
        .unwrap();
    assert_eq!(
        renamed.config.providers["openai"].common.offered_models,
        Some(vec!["gpt-image-2".to_string()])
    );
    assert!(!renamed.notices().join("\n").contains("old spelling"));
}

#[test]
fn syntax_errors_give_the_line() {
    let sb = Sandbox::new();
    let msg = err(sb.load_file("[output]\ndelivery = \"link\" x\n", &[]));
    assert!(msg.contains("imagegen.toml, line 2, column 19"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn show_gives_every_value_its_source() {
    let sb = Sandbox::new();
    let file = sb.write("work/imagegen.toml", "[providers.openai]\ntimeout_s = 60\n");
    let loaded = sb
        .load(&[
            ("OPENAI_API_KEY", SENTINEL),
            ("IMAGEGEN_PROVIDERS__OPENAI__MODEL", "gpt-image-2"),
        ])
        .unwrap();
    let show = loaded.show();
    assert!(
        show.contains(&format!("# config file: {}", file.display())),
        "{show}"
    );
    assert!(show.contains("[providers.openai]\nkind = \"openai\"  # env OPENAI_API_KEY\napi_key = \"sk-…cdef\"  # env OPENAI_API_KEY"), "{show}");
    assert!(
        show.contains("model = \"gpt-image-2\"  # env IMAGEGEN_PROVIDERS__OPENAI__MODEL"),
        "{show}"
    );
    assert!(
        show.contains(&format!("timeout_s = 60  # file {}", file.display())),
        "{show}"
    );
    assert!(show.contains("max_retries = 2  # default"), "{show}");
    assert!(
        show.contains("default_provider = \"openai\"  # env OPENAI_API_KEY"),
        "{show}"
    );
    assert!(
        show.contains("[providers.mock]\nkind = \"mock\"  # default"),
        "{show}"
    );
    assert!(show.contains("fail_rate = 0.0  # default"), "{show}");
    // The mock makes no HTTP calls: none of the HTTP settings are shown for it.
    let mock = show.split("[providers.mock]").nth(1).unwrap();
    let mock = mock.split("\n[").next().unwrap();
    assert!(
        !mock.contains("timeout_s") && !mock.contains("max_retries"),
        "{mock}"
    );
    assert!(
        show.contains(&format!(
            "dir = \"{}\"  # default",
            loaded.output_dir().display()
        )),
        "{show}"
    );
    assert!(!show.contains("SENTINEL"), "{show}");
    // The rendered configuration is TOML.
    let _: toml::Table = toml::from_str(&show).expect(&show);
}

/// Every way a misplaced or malformed key could reach a message.
#[test]
fn secrets_never_appear_in_errors_debug_or_show() {
    let sb = Sandbox::new();
    let numeric = "987654321987654321";
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        // A bad type next to the key.
        (
            format!("[providers.openai]\napi_key = \"{SENTINEL}\"\ntimeout_s = \"soon\"\n"),
            vec![],
        ),
        // The key itself with a wrong type.
        (format!("[providers.openai]\napi_key = {numeric}\n"), vec![]),
        // Syntax errors on the key's line.
        (
            format!("[providers.openai]\napi_key = \"{SENTINEL}\n"),
            vec![],
        ),
        (
            format!("[providers.openai]\napi_key = {SENTINEL}\n"),
            vec![],
        ),
        (
            format!("[providers.openai]\napi_key = \"{SENTINEL}\" x\n"),
            vec![],
        ),
        // An unknown key beside it, and the key under a misspelled name.
        (
            format!("[providers.openai]\napi_key = \"{SENTINEL}\"\nmodle = \"x\"\n"),
            vec![],
        ),
        (
            format!("[providers.openai]\napi_kee = \"{SENTINEL}\"\n"),
            vec![],
        ),
        // The key pasted into the wrong setting.
        (
            format!("[providers.offline]\nkind = \"mock\"\nfail_with = \"{SENTINEL}\"\n"),
            vec![],
        ),
        (
            format!("[providers.openai]\nbase_url = \"{SENTINEL}\"\n"),
            vec![],
        ),
        (format!("default_provider = \"{SENTINEL}\"\n"), vec![]),
        // From the environment.
        (
            String::new(),
            vec![("IMAGEGEN_PROVIDERS__OPENAI__TIMEOUT_S", SENTINEL)],
        ),
        (
            String::new(),
            vec![
                ("IMAGEGEN_PROVIDERS__OPENAI__API_KEY", numeric),
                ("IMAGEGEN_PROVIDERS__OPENAI__MAX_RETRIES", numeric),
            ],
        ),
        (
            String::new(),
            vec![
                ("IMAGEGEN_PROVIDERS__OPENAI__API_KEY", SENTINEL),
                ("IMAGEGEN_PROVIDERS__OPENAI__BASE_URL", "nope"),
            ],
        ),
        (
            String::new(),
            vec![
                ("OPENAI_API_KEY", SENTINEL),
                ("IMAGEGEN_DEFAULT_PROVIDER", "x"),
            ],
        ),
    ];
    for (toml, env) in cases {
        let msg = err(sb.load_file(&toml, &env));
        assert!(
            !msg.contains("SENTINEL") && !msg.contains(numeric),
            "{toml}\n{env:?}\n=> {msg}"
        );
        assert!(!format!("{:?}", sb.load_file(&toml, &env)).contains("SENTINEL"));
    }

    let loaded = sb
        .load_file(
            &format!("[providers.openai]\napi_key = \"{SENTINEL}\"\n"),
            &[("OPENAI_API_KEY", numeric)],
        )
        .unwrap();
    for text in [
        format!("{loaded:?}"),
        loaded.show(),
        loaded.notices().join("\n"),
    ] {
        assert!(
            !text.contains("SENTINEL") && !text.contains(numeric),
            "{text}"
        );
    }
    assert!(loaded.show().contains("sk-…cdef"));
}

#[test]
fn the_example_file_loads() {
    let sb = Sandbox::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/imagegen.example.toml");
    let cli = CliOverrides {
        config: Some(example.clone()),
        ..CliOverrides::default()
    };
    let loaded = sb
        .load_cli(&cli, &[("OPENAI_API_KEY", "sk-dummy-0000abcd")])
        .unwrap();
    assert_eq!(loaded.default_provider(), "openai");
    assert_eq!(
        loaded.output_dir(),
        example.parent().unwrap().join("images")
    );
    assert_eq!(loaded.config.providers["offline"].kind(), "mock");
    assert!(loaded.catalog().get("gpt-image-3").known);
    // Every key the example sets has the built-in default value, except where it says otherwise.
    let c = openai(&loaded, "openai");
    let d = view(&ProviderConfig::of(
        imagegen_providers::build::KindConfig::Openai(Default::default()),
    ));
    assert_eq!(
        (c.model, c.timeout_s, c.max_retries, c.base_url),
        (d.model, d.timeout_s, d.max_retries, d.base_url)
    );

    // With the api_key lines uncommented it still loads (api_key alone).
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("# api_key = \"sk-...\"", "api_key = \"sk-...\"");
    let file = sb.write("example.toml", &text);
    let cli = CliOverrides {
        config: Some(file),
        ..CliOverrides::default()
    };
    let loaded = sb.load_cli(&cli, &[]).unwrap();
    assert_eq!(key(&loaded, "openai").0, "sk-...");
}

#[test]
fn vendor_variables_create_their_providers_and_openai_stays_the_default() {
    let sb = Sandbox::new();
    // A key set for another tool, without the endpoint the provider needs, stops nothing.
    let loaded = sb.load(&[("AZURE_OPENAI_API_KEY", SENTINEL)]).unwrap();
    assert!(!loaded.config.providers.contains_key("azure_openai"));
    let notices = loaded.notices().join("\n");
    assert!(
        notices.contains("provider `azure_openai`") && notices.contains("endpoint"),
        "{notices}"
    );
    assert!(!notices.contains(SENTINEL), "{notices}");

    let both = [
        ("AZURE_OPENAI_API_KEY", SENTINEL),
        ("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com"),
    ];
    let loaded = sb.load(&both).unwrap();
    assert_eq!(
        loaded.config.providers["azure_openai"].kind(),
        "azure_openai"
    );
    assert_eq!(loaded.default_provider(), "azure_openai");
    let mut all = both.to_vec();
    all.push(("OPENAI_API_KEY", "sk-other-0123456789"));
    let loaded = sb.load(&all).unwrap();
    assert_eq!(loaded.default_provider(), "openai");
}
