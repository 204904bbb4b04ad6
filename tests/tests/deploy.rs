//! The deployment files, checked without a cluster or a lab: the
//! DaemonSet's manifest (capabilities, host access, the node's name, and
//! that `vxtrace watch` accepts exactly its arguments), the image's
//! Containerfile, the Grafana dashboard (every PromQL expression names
//! only metrics vxtrace serves, the recording rules, and their labels), and
//! the Prometheus Operator's PodMonitor and PrometheusRule (exactly what
//! `cargo xtask manifests` generates, and consistent with the DaemonSet and
//! the rules).

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde::Deserialize as _;
use serde_json::Value;
use vxtrace_tests::{bin, run};

/// The generator of `cargo xtask manifests`, the same source.
#[path = "../../xtask/src/manifests.rs"]
mod manifests;

const MANIFEST: &str = "deploy/kubernetes/vxtrace-daemonset.yaml";
const DASHBOARD: &str = "deploy/grafana/vxtrace.json";
const CONTAINERFILE: &str = "deploy/container/Containerfile";

/// What vxtrace serves on /metrics, by the names Prometheus stores (a
/// counter family `x` as `x_total`, a histogram as its series), besides
/// the per-peer counters of `schema::PEER_COUNTERS` (checked against this
/// list below).
const METRICS: &[&str] = &[
    "vxtrace_tx_encap_packets_total",
    "vxtrace_tx_encap_bytes_total",
    "vxtrace_rx_nic_packets_total",
    "vxtrace_rx_nic_bytes_total",
    "vxtrace_rx_decap_packets_total",
    "vxtrace_rx_decap_bytes_total",
    "vxtrace_tx_flood_packets_total",
    "vxtrace_tx_dev_packets_total",
    "vxtrace_malformed_packets_total",
    "vxtrace_unknown_vni_packets_total",
    "vxtrace_inner_dst_mac_mismatch_total",
    "vxtrace_inner_src_vtep_total",
    "vxtrace_tcp_syn_sent_total",
    "vxtrace_tcp_syn_received_total",
    "vxtrace_tcp_synack_sent_total",
    "vxtrace_tcp_synack_received_total",
    "vxtrace_tcp_rst_total",
    "vxtrace_tcp_syn_retrans_total",
    "vxtrace_tcp_unanswered_syn_total",
    "vxtrace_drops_total",
    "vxtrace_outages_total",
    "vxtrace_peer_one_way",
    "vxtrace_peer_finding",
    "vxtrace_peers_with_finding",
    "vxtrace_tcp_handshake_seconds_bucket",
    "vxtrace_tcp_handshake_seconds_sum",
    "vxtrace_tcp_handshake_seconds_count",
    "vxtrace_node_info",
    "vxtrace_unseen_packets_total",
];

/// The recording rules the dashboard is built on (each labelled
/// from_node, to_node, family, and cluster and job where the scraped series
/// have them).
const RULES: &[&str] = &[
    "vxtrace:link_path_loss:ratio_rate5m",
    "vxtrace:link_receiver_loss:ratio_rate5m",
    "vxtrace:link_tx_encap:rate5m",
    "vxtrace:link_rx_nic:rate5m",
    "vxtrace:vtep:info",
];

/// Labels of those series: vxtrace's, the rules', Prometheus' own target
/// labels and the histogram's bucket bound.
const LABELS: &[&str] = &[
    "peer",
    "reason",
    "cause",
    "segment",
    "node",
    "vtep",
    "from_node",
    "to_node",
    "from_vtep",
    "to_vtep",
    "instance",
    "job",
    "cluster",
    "le",
    "__name__",
];

/// PromQL's functions and aggregations the dashboard may call.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "stddev",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
];

/// PromQL keywords that are neither metrics nor functions.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Keywords followed by a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of the manifest file.
fn manifests() -> Vec<Value> {
    yaml_documents(&repo_file(MANIFEST))
}

/// Every document of a YAML text.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("the manifest is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn daemonset() -> Value {
    manifests()
        .into_iter()
        .find(|m| m["kind"] == "DaemonSet")
        .expect("a DaemonSet in the manifest")
}

/// The DaemonSet's one container.
fn container(ds: &Value) -> &Value {
    let containers = ds
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    assert!(
        ds.pointer("/spec/template/spec/initContainers").is_none(),
        "no init containers"
    );
    &containers[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("a string: {s}"))
                .to_string()
        })
        .collect()
}

#[test]
fn manifest_is_a_namespace_a_service_account_and_a_daemonset() {
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "DaemonSet"]);
    assert_eq!(docs[0]["metadata"]["name"], "vxtrace");
    for d in &docs[1..] {
        assert_eq!(d["metadata"]["namespace"], "vxtrace", "{d}");
    }
    let ds = &docs[2];
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        docs[1]["metadata"]["name"]
    );
    // The selector selects the pods the DaemonSet makes.
    let selector = ds["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(&pod["metadata"]["labels"][k], v, "label {k}");
    }
}

#[test]
fn capabilities_are_exactly_bpf_net_admin_perfmon() {
    let ds = daemonset();
    let sc = &container(&ds)["securityContext"];
    assert_eq!(sc["privileged"], false, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    let mut add = strings(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    // Nothing at the pod's level widens it.
    let pod = &ds["spec"]["template"]["spec"];
    for wide in ["hostPID", "hostIPC"] {
        assert_ne!(pod[wide], true, "{wide}");
    }
}

#[test]
fn host_network_and_only_btf_from_the_host_read_only() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_paths: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(host_paths, BTreeSet::from(["/sys/kernel/btf"]));
    for m in container(&ds)["volumeMounts"].as_array().expect("mounts") {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume for {m}"));
        if volume.get("hostPath").is_some() {
            assert_eq!(m["readOnly"], true, "{m}");
        }
    }
    // Every node, whatever its taints.
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{tolerations:?}"
    );
}

/// The downward API field an env var of the container comes from.
fn env_field(c: &Value, name: &str) -> String {
    let env = c["env"].as_array().expect("env");
    let var = env
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} in env"));
    var.pointer("/valueFrom/fieldRef/fieldPath")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{name} from a fieldRef: {var}"))
        .to_string()
}

#[test]
fn node_name_and_address_come_from_the_downward_api() {
    let ds = daemonset();
    let c = container(&ds);
    assert_eq!(env_field(c, "NODE_NAME"), "spec.nodeName");
    assert_eq!(env_field(c, "HOST_IP"), "status.hostIP");
}

/// The container's args as the kubelet runs them: each `$(VAR)` replaced
/// by the container's env var VAR, with the values the downward API would
/// give (`spec.nodeName`: node-a, `status.hostIP`: 127.0.0.1). A `$(VAR)`
/// of no env var would stay as it is in a real pod: here it fails.
fn expanded_args(c: &Value) -> Vec<String> {
    strings(&c["args"])
        .into_iter()
        .map(|arg| {
            let mut out = String::new();
            let mut rest = arg.as_str();
            while let Some(at) = rest.find("$(") {
                out.push_str(&rest[..at]);
                let end = rest[at..]
                    .find(')')
                    .unwrap_or_else(|| panic!("unclosed $( in {arg}"));
                let var = &rest[at + 2..at + end];
                let value = match env_field(c, var).as_str() {
                    "spec.nodeName" => "node-a",
                    "status.hostIP" => "127.0.0.1",
                    other => panic!("{var}: no test value for {other}"),
                };
                out.push_str(value);
                rest = &rest[at + end + 1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

#[test]
fn image_port_probe_and_scrape_annotations_agree() {
    let ds = daemonset();
    let c = container(&ds);
    assert_eq!(
        c["image"],
        format!("vxtrace:{}", env!("CARGO_PKG_VERSION")),
        "the tag cargo xtask image builds"
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    let args = strings(&c["args"]);
    assert!(
        args.starts_with(&["watch".into(), "--agent".into()]),
        "{args:?}"
    );
    let at = args
        .iter()
        .position(|a| a == "--metrics")
        .expect("--metrics");
    // The node's own address, not every address of the node.
    assert_eq!(args[at + 1], "$(HOST_IP):9478");
    assert_eq!(expanded_args(c)[at + 1], "127.0.0.1:9478");
    assert_eq!(c["ports"][0]["containerPort"], 9478);
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 9478);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 9478);
    // The probes go to the pod's address, the node's (hostNetwork): where
    // the metrics listen.
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(c[probe]["httpGet"].get("host").is_none(), "{probe}");
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9478");
    let r = &c["resources"];
    assert_eq!(r["requests"]["cpu"], "30m");
    assert_eq!(r["requests"]["memory"], "64Mi");
    assert!(r["limits"]["memory"].is_string(), "{r}");
    assert!(ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].is_u64());
}

/// `vxtrace ARGS` as nobody (no capabilities), with NODE_NAME set as the
/// downward API sets it: (exit code, stderr).
fn run_unprivileged(args: &[String]) -> (i32, String) {
    // SAFETY: geteuid cannot fail.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.args(args).env("NODE_NAME", "node-a");
    let (code, _, err) = run(&mut cmd);
    (code, err)
}

/// Whether `vxtrace` accepts `args`: past clap (which exits 2 on a usage
/// error) to the capability check, which fails for nobody.
fn assert_args_accepted(args: &[String]) {
    let (code, err) = run_unprivileged(args);
    assert_eq!(code, 1, "{args:?}: {err}");
    assert!(err.contains("missing capabilities"), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // The same with a flag vxtrace does not know is a usage error: the
    // exit code tells the two apart.
    let mut wrong = args.to_vec();
    wrong.push("--no-such-flag".into());
    let (code, err) = run_unprivileged(&wrong);
    assert_eq!(code, 2, "{wrong:?}: {err}");
}

#[test]
fn watch_accepts_the_manifest_args() {
    let ds = daemonset();
    let c = container(&ds);
    assert_eq!(strings(&c["command"]), ["/vxtrace"]);
    assert_args_accepted(&expanded_args(c));
}

/// The JSON array of a Containerfile instruction (`CMD ["a", "b"]`).
fn instruction(containerfile: &str, name: &str) -> Vec<String> {
    let lines: Vec<&str> = containerfile
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .collect();
    assert_eq!(lines.len(), 1, "one {name}: {lines:?}");
    serde_json::from_str(lines[0].trim())
        .unwrap_or_else(|e| panic!("{name} {}: not a JSON array ({e})", lines[0]))
}

#[test]
fn containerfile_runs_the_binary_alone() {
    let text = repo_file(CONTAINERFILE);
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from, ["FROM scratch"]);
    assert_eq!(instruction(&text, "ENTRYPOINT"), ["/vxtrace"]);
    let cmd = instruction(&text, "CMD");
    assert_eq!(cmd, ["watch", "--agent"]);
    assert_args_accepted(&cmd);
    // The manifest runs the same binary.
    assert_eq!(strings(&container(&daemonset())["command"]), ["/vxtrace"]);
}

/// What a PromQL expression names: metrics, labels, functions.
#[derive(Debug, Default)]
struct Names {
    metrics: Vec<String>,
    labels: Vec<String>,
    functions: Vec<String>,
}

/// Reads the names out of a PromQL expression (with Grafana's variables in
/// it): identifiers are metrics unless they call, are keywords, or stand
/// in a label list or a selector's braces; strings, ranges, numbers and
/// `$variables` are skipped.
fn promql_names(expr: &str) -> Names {
    let s: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_string = |i: &mut usize| {
        let quote = s[*i];
        *i += 1;
        while *i < s.len() && s[*i] != quote {
            if s[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    let next_non_space = |i: usize| s[i..].iter().copied().find(|c| !c.is_whitespace());
    // Set after a keyword that takes a label list: the next `(...)` is one.
    let mut label_list_next = false;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            skip_string(&mut i);
        } else if c == '$' {
            // A Grafana variable: $name, ${name}, $__rate_interval.
            i += 1;
            if i < s.len() && s[i] == '{' {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
            }
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // A selector: label names, each before its operator and value.
            i += 1;
            while i < s.len() && s[i] != '}' {
                if s[i] == '"' || s[i] == '\'' || s[i] == '`' {
                    skip_string(&mut i);
                } else if ident_start(s[i]) {
                    let start = i;
                    while i < s.len() && ident_char(s[i]) {
                        i += 1;
                    }
                    names.labels.push(s[start..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '(' && label_list_next {
            label_list_next = false;
            i += 1;
            while i < s.len() && s[i] != ')' {
                if ident_start(s[i]) {
                    let start = i;
                    while i < s.len() && ident_char(s[i]) {
                        i += 1;
                    }
                    names.labels.push(s[start..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (0.99, 1e3, 0x1f).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < s.len() && ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                // `group_left` may stand without a list.
                label_list_next = next_non_space(i) == Some('(');
            } else if !KEYWORDS.contains(&lower.as_str()) {
                if next_non_space(i) == Some('(') || FUNCTIONS.contains(&word.as_str()) {
                    // A call, or an aggregation followed by `by (...)`.
                    names.functions.push(word);
                } else {
                    names.metrics.push(word);
                }
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_names_are_read_out() {
    let n = promql_names(
        r#"histogram_quantile(0.99, sum by (node, le) (rate(vxtrace_tcp_handshake_seconds_bucket{peer!="other", reason=~"a|b"}[$__rate_interval]) * on (instance) group_left (node) max by (instance, node) (vxtrace_node_info{node=~"$node"}))) > 1e-3 or vector(0)"#,
    );
    assert_eq!(
        n.metrics,
        ["vxtrace_tcp_handshake_seconds_bucket", "vxtrace_node_info"]
    );
    assert_eq!(
        n.labels,
        [
            "node", "le", "peer", "reason", "instance", "node", "instance", "node", "node"
        ]
    );
    assert_eq!(
        n.functions,
        ["histogram_quantile", "sum", "rate", "max", "vector"]
    );
    let n = promql_names(
        r#"vxtrace:link_rx_nic:rate5m{from_node=~"${node}"} / ignoring (to_vtep) group_left vxtrace_tx_encap_packets_total"#,
    );
    assert_eq!(
        n.metrics,
        [
            "vxtrace:link_rx_nic:rate5m",
            "vxtrace_tx_encap_packets_total"
        ]
    );
    assert_eq!(n.labels, ["from_node", "to_vtep"]);
}

/// The known metric names match what vxtrace declares: each per-peer
/// counter with a metric name is in METRICS (as `_total`).
#[test]
fn the_metric_list_matches_vxtrace() {
    for def in vxtrace::schema::PEER_COUNTERS {
        if let Some(name) = def.metric {
            let total = format!("{name}_total");
            assert!(
                METRICS.contains(&total.as_str()),
                "{total} is served but not in METRICS"
            );
        }
    }
}

/// Every panel of the dashboard, rows' panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&repo_file(DASHBOARD)).expect("the dashboard is JSON")
}

fn check_names(what: &str, n: &Names) {
    for m in &n.metrics {
        assert!(
            METRICS.contains(&m.as_str()) || RULES.contains(&m.as_str()),
            "{what}: unknown metric {m}"
        );
    }
    for l in &n.labels {
        assert!(LABELS.contains(&l.as_str()), "{what}: unknown label {l}");
    }
    for f in &n.functions {
        assert!(
            FUNCTIONS.contains(&f.as_str()),
            "{what}: unknown function {f}"
        );
    }
}

#[test]
fn dashboard_queries_name_only_vxtrace_metrics_and_rules() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().expect("expr");
            let names = promql_names(expr);
            let what = format!("{title}: {expr}");
            assert!(!names.metrics.is_empty(), "{what}: names no metric");
            check_names(&what, &names);
            used.extend(names.metrics);
            exprs += 1;
        }
    }
    assert!(exprs >= 10, "{exprs} queries");
    // The matrix, the per-link timelines, drops, findings and one-way
    // peers are all there.
    for needed in RULES.iter().chain(&[
        "vxtrace_drops_total",
        "vxtrace_peer_finding",
        "vxtrace_peer_one_way",
        "vxtrace_node_info",
    ]) {
        assert!(used.contains(*needed), "no panel uses {needed}");
    }
}

#[test]
fn dashboard_variables_are_the_datasource_and_the_node() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("variables");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let node = vars
        .iter()
        .find(|v| v["name"] == "node")
        .expect("a node variable");
    assert_eq!(node["type"], "query");
    assert_eq!(node["datasource"]["uid"], "${datasource}");
    let query = node["query"]["query"]
        .as_str()
        .unwrap_or_else(|| node["query"].as_str().expect("the node variable's query"));
    assert_eq!(query, "label_values(vxtrace_node_info, node)");
    // Grafana's label_values(METRIC, LABEL): both known.
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .expect("label_values(...)");
    let (metric, label) = inner.split_once(',').expect("metric, label");
    check_names(
        "the node variable",
        &Names {
            metrics: vec![metric.trim().into()],
            labels: vec![label.trim().into()],
            functions: Vec::new(),
        },
    );
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The committed PodMonitor and PrometheusRule are byte for byte what
/// `cargo xtask manifests` writes: run it after changing the rules.
#[test]
fn operator_manifests_are_what_xtask_generates() {
    let generated = manifests::generate(&workspace_root()).expect("reading the rules");
    let paths: Vec<&str> = generated.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths, [manifests::POD_MONITOR, manifests::PROMETHEUS_RULE]);
    for (rel, text) in generated {
        assert!(
            repo_file(rel) == text,
            "{rel} is not what `cargo xtask manifests` generates: run it"
        );
    }
}

/// The PrometheusRule's spec is the rules file, rule for rule; it lives in
/// the DaemonSet's namespace.
#[test]
fn prometheus_rule_holds_the_rules() {
    let docs = yaml_documents(&repo_file(manifests::PROMETHEUS_RULE));
    assert_eq!(docs.len(), 1, "{docs:?}");
    let rule = &docs[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["metadata"]["namespace"],
        daemonset()["metadata"]["namespace"]
    );
    let rules: Value = serde_norway::from_str(&repo_file(manifests::RULES)).expect("rules YAML");
    assert_eq!(rule["spec"], rules);
    // Every alert has a runbook_url to a section of the README.
    let readme = repo_file("README.md");
    let mut alerts = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let Some(name) = r["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = r["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no runbook_url"));
            assert_eq!(
                url,
                format!("README.md#{}", name.to_ascii_lowercase()),
                "{name}"
            );
            assert!(
                readme.contains(&format!("\n#### {name}\n")),
                "{name}: no README section"
            );
        }
    }
    assert!(alerts >= 9, "{alerts} alerts");
}

/// The PodMonitor selects the DaemonSet's pods, in its namespace, on the
/// container's named metrics port.
#[test]
fn pod_monitor_scrapes_the_daemonset() {
    let docs = yaml_documents(&repo_file(manifests::POD_MONITOR));
    assert_eq!(docs.len(), 1, "{docs:?}");
    let pm = &docs[0];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    let ds = daemonset();
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&pod_labels[k], v, "label {k}");
    }
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let port = &container(&ds)["ports"][0];
    assert_eq!(endpoints[0]["port"], port["name"]);
    assert_eq!(endpoints[0]["path"], "/metrics");
    // The job the PodMonitor gives its targets (NAMESPACE/NAME) is one
    // VxtraceTargetDown watches.
    let job = format!(
        "{}/{}",
        pm["metadata"]["namespace"].as_str().unwrap(),
        pm["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(job, "vxtrace/vxtrace");
    assert!(repo_file(manifests::RULES).contains(r#"up{job=~"vxtrace|.*/vxtrace"}"#));
}

/// A directory of its own under the system's temporary one, removed on
/// drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vxtrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A dashboard query as Grafana sends it to Prometheus with `node` selected
/// (a node's name, as in a row repeated per node, or `.*` for All; the
/// dashboard puts `$node` in regex matchers only), a 5m rate interval and a
/// 1h time range. Only label_replace's `$1` remains.
fn grafana_expr(expr: &str, node: &str) -> String {
    let e = expr
        .replace("${node}", node)
        .replace("$node", node)
        .replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m");
    for (at, _) in e.match_indices('$') {
        assert!(
            e[at + 1..].starts_with(|c: char| c.is_ascii_digit()),
            "a Grafana variable left in {e}"
        );
    }
    e
}

/// Every query of the dashboard, rows' panels included: (panel title,
/// refId, expr).
fn dashboard_queries(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("?").to_string(),
                t["refId"].as_str().unwrap_or("?").to_string(),
                t["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// The query `ref_id` of the panel titled `title`.
fn dashboard_query(d: &Value, title: &str, ref_id: &str) -> String {
    dashboard_queries(d)
        .into_iter()
        .find(|(t, r, _)| t == title && r == ref_id)
        .unwrap_or_else(|| panic!("no query {ref_id} in a panel {title:?}"))
        .2
}

/// A panel's value mappings, value to text, from its defaults and its
/// overrides.
fn value_mappings(panel: &Value) -> std::collections::BTreeMap<String, String> {
    let config = &panel["fieldConfig"];
    let mut lists = vec![&config["defaults"]["mappings"]];
    for o in config["overrides"].as_array().into_iter().flatten() {
        for prop in o["properties"].as_array().into_iter().flatten() {
            if prop["id"] == "mappings" {
                lists.push(&prop["value"]);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for m in lists.into_iter().filter_map(Value::as_array).flatten() {
        assert_eq!(m["type"], "value", "{m}");
        for (value, option) in m["options"].as_object().expect("mapping options") {
            let text = option["text"].as_str().expect("mapping text").to_string();
            assert!(out.insert(value.clone(), text).is_none(), "{value} twice");
        }
    }
    out
}

/// Every query of the dashboard is valid PromQL for Prometheus' own
/// parser (each as a recording rule of a file `promtool check rules`
/// checks, with Grafana's variables as Grafana fills them in); the panel
/// ids are unique; the link-state panels map their values to the four
/// states.
#[test]
fn dashboard_queries_pass_promtool_and_link_states_are_named() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
    }
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 30, "{} queries", queries.len());
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, _, expr))| {
            serde_json::json!({
                "record": format!("dashboard:expr_{i}"),
                "expr": grafana_expr(expr, ".*"),
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = TempDir::new("dashboard-rules");
    let path = dir.0.join("dashboard-rules.yaml");
    std::fs::write(&path, serde_norway::to_string(&file).unwrap()).unwrap();
    let (code, out, err) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path));
    assert_eq!(code, 0, "promtool check rules: {out}{err}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}{err}"
    );

    let states: std::collections::BTreeMap<String, String> = [
        ("0", "no series"),
        ("1", "no traffic"),
        ("2", "no loss"),
        ("3", "loss"),
    ]
    .into_iter()
    .map(|(v, t)| (v.to_string(), t.to_string()))
    .collect();
    let state_panels: Vec<&Value> = panels(&d)
        .into_iter()
        .filter(|p| {
            p["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Link state"))
        })
        .collect();
    let titles: Vec<&str> = state_panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&"Link state from $node"), "{titles:?}");
    assert!(titles.contains(&"Link state to $node"), "{titles:?}");
    for p in state_panels {
        assert_eq!(value_mappings(p), states, "{}", p["title"]);
    }
}

/// One input series of a promtool unit test, constant over 20 minutes.
fn series(name: &str, labels: &str, value: &str) -> Value {
    serde_json::json!({ "series": format!("{name}{{{labels}}}"), "values": format!("{value}x20") })
}

/// A sample promtool expects: labels and value.
fn sample(labels: &str, value: f64) -> Value {
    serde_json::json!({ "labels": format!("{{{labels}}}"), "value": value })
}

/// The dashboard's link states, evaluated by promtool on the recording
/// rules' series: two clusters sharing node names and addresses, the
/// selected node a (dual-stack) and its peers b (lossy over IPv4, healthy
/// over IPv6), c (healthy, receiver loss under 5 %), d (series at zero
/// rate), e (not scraped for the last 7 minutes: no series, still known),
/// f (exports nothing: only a's end of the link); a link of a to itself
/// is left out. The findings per cause and the traffic summed into the rest
/// on vxtrace's own series, in the same two clusters.
#[test]
fn dashboard_link_states_and_the_rest_evaluate_in_promtool() {
    let d = dashboard();
    let c1 = r#"cluster="c1",job="vxtrace""#;
    let c2 = r#"cluster="c2",job="vxtrace""#;
    let vtep = |cluster: &str, node: &str, vtep: &str, family: &str, values: &str| {
        serde_json::json!({
            "series": format!(
                r#"vxtrace:vtep:info{{{cluster},instance="{node}:9478",node="{node}",vtep="{vtep}",family="{family}"}}"#
            ),
            "values": values,
        })
    };
    let link = |metric: &str, cluster: &str, from: &str, to: &str, family: &str, v: &str| {
        series(
            &format!("vxtrace:link_{metric}"),
            &format!(r#"{cluster},from_node="{from}",to_node="{to}",family="{family}""#),
            v,
        )
    };
    // tx, rx_nic, rx_decap, path loss, receiver loss (None: no series).
    let mut links = Vec::new();
    let mut add = |cluster: &str, from: &str, to: &str, family: &str, v: [Option<&str>; 5]| {
        let metrics = [
            "tx_encap:rate5m",
            "rx_nic:rate5m",
            "rx_decap:rate5m",
            "path_loss:ratio_rate5m",
            "receiver_loss:ratio_rate5m",
        ];
        for (m, v) in metrics.iter().zip(v) {
            if let Some(v) = v {
                links.push(link(m, cluster, from, to, family, v));
            }
        }
    };
    let healthy = [Some("10"), Some("10"), Some("10"), Some("0"), Some("0")];
    add(
        c1,
        "a",
        "b",
        "ipv4",
        [Some("10"), Some("5"), Some("5"), Some("0.5"), Some("0")],
    );
    add(c1, "a", "b", "ipv6", healthy);
    add(
        c1,
        "a",
        "c",
        "ipv4",
        [Some("10"), Some("10"), Some("9.8"), Some("0"), Some("0.02")],
    );
    add(
        c1,
        "a",
        "d",
        "ipv4",
        [Some("0"), Some("0"), Some("0"), None, None],
    );
    add(c1, "a", "f", "ipv4", [Some("10"), None, None, None, None]);
    add(c1, "a", "a", "ipv4", healthy);
    add(
        c1,
        "b",
        "a",
        "ipv4",
        [Some("10"), Some("10"), Some("0"), Some("0"), Some("1")],
    );
    add(c1, "c", "a", "ipv4", healthy);
    add(
        c1,
        "f",
        "a",
        "ipv4",
        [Some("0"), Some("0"), None, None, None],
    );
    add(c2, "a", "b", "ipv4", healthy);
    let mut input = vec![
        vtep(c1, "a", "192.0.2.1", "ipv4", "1x20"),
        vtep(c1, "a", "2001:db8::1", "ipv6", "1x20"),
        vtep(c1, "b", "192.0.2.2", "ipv4", "1x20"),
        vtep(c1, "b", "2001:db8::2", "ipv6", "1x20"),
        vtep(c1, "c", "192.0.2.3", "ipv4", "1x20"),
        vtep(c1, "d", "192.0.2.4", "ipv4", "1x20"),
        vtep(c1, "e", "192.0.2.5", "ipv4", "1x3"),
        vtep(c1, "f", "192.0.2.6", "ipv4", "1x20"),
        vtep(c2, "a", "192.0.2.1", "ipv4", "1x20"),
        vtep(c2, "b", "192.0.2.2", "ipv4", "1x20"),
    ];
    input.extend(links);
    let pair = |cluster: &str, from: &str, to: &str| {
        format!(r#"{cluster},from_node="{from}",to_node="{to}""#)
    };
    let from_a = vec![
        sample(&pair(c1, "a", "b"), 3.0),
        sample(&pair(c1, "a", "c"), 2.0),
        sample(&pair(c1, "a", "d"), 1.0),
        sample(&pair(c1, "a", "e"), 0.0),
        sample(&pair(c1, "a", "f"), 0.0),
        sample(&pair(c2, "a", "b"), 2.0),
    ];
    let to_a = vec![
        sample(&pair(c1, "b", "a"), 3.0),
        sample(&pair(c1, "c", "a"), 2.0),
        sample(&pair(c1, "f", "a"), 1.0),
        sample(&pair(c1, "d", "a"), 0.0),
        sample(&pair(c1, "e", "a"), 0.0),
        sample(&pair(c2, "b", "a"), 0.0),
    ];
    let mut link_tests = Vec::new();
    for (title, expected) in [
        ("Link state from $node", &from_a),
        ("Link state from $node over time", &from_a),
        ("Link state to $node", &to_a),
        ("Link state to $node over time", &to_a),
    ] {
        link_tests.push(serde_json::json!({
            "expr": grafana_expr(&dashboard_query(&d, title, "A"), "a"),
            "eval_time": "10m",
            "exp_samples": expected,
        }));
    }

    // vxtrace's own series: node a in both clusters, on the same instance.
    let a1 = format!(r#"{c1},instance="a:9478""#);
    let a2 = format!(r#"{c2},instance="a:9478""#);
    let path_loss = r#"cause="path_loss",segment="path""#;
    let raw = vec![
        series(
            "vxtrace_node_info",
            &format!(r#"{a1},node="a",vtep="192.0.2.1""#),
            "1",
        ),
        series(
            "vxtrace_node_info",
            &format!(r#"{a1},node="a",vtep="2001:db8::1""#),
            "1",
        ),
        series(
            "vxtrace_node_info",
            &format!(r#"{a2},node="a",vtep="192.0.2.1""#),
            "1",
        ),
        vtep(c1, "b", "192.0.2.2", "ipv4", "1x20"),
        // c1's a: 3 peers with path loss, 1 with series of its own (b),
        // and one with a finding it no longer shows.
        series(
            "vxtrace_peers_with_finding",
            &format!("{a1},{path_loss}"),
            "3",
        ),
        series(
            "vxtrace_peers_with_finding",
            &format!(r#"{a1},cause="host_firewall",segment="receiver_host""#),
            "0",
        ),
        series(
            "vxtrace_peer_finding",
            &format!(r#"{a1},peer="192.0.2.2",{path_loss}"#),
            "1",
        ),
        series(
            "vxtrace_peer_finding",
            &format!(r#"{a1},peer="198.51.100.9",{path_loss}"#),
            "1",
        ),
        // c2's a: one, in the rest.
        series(
            "vxtrace_peers_with_finding",
            &format!("{a2},{path_loss}"),
            "1",
        ),
        // c1's a sends 10/s to b and 2.5/s to the rest; receives 5/s from
        // b, nothing from the rest.
        series(
            "vxtrace_tx_encap_packets_total",
            &format!(r#"{a1},peer="192.0.2.2""#),
            "0+600",
        ),
        series(
            "vxtrace_tx_encap_packets_total",
            &format!(r#"{a1},peer="other_peers""#),
            "0+150",
        ),
        series(
            "vxtrace_rx_nic_packets_total",
            &format!(r#"{a1},peer="192.0.2.2""#),
            "0+300",
        ),
        // c2's a sends 1/s, all to the rest.
        series(
            "vxtrace_tx_encap_packets_total",
            &format!(r#"{a2},peer="other_peers""#),
            "0+60",
        ),
    ];
    let node_a = |cluster: &str, more: &str| format!(r#"{cluster},node="a"{more}"#);
    let cause = format!(",{path_loss}");
    let rest = "Traffic summed into the rest (last 5 minutes)";
    let findings = "Peers with each finding";
    let raw_tests: Vec<Value> = [
        (
            findings,
            "A",
            vec![
                sample(&node_a(c1, &cause), 3.0),
                sample(&node_a(c2, &cause), 1.0),
            ],
        ),
        (findings, "B", vec![sample(&node_a(c1, &cause), 2.0)]),
        (
            findings,
            "C",
            vec![
                sample(&node_a(c1, &cause), 1.0),
                sample(&node_a(c2, &cause), 1.0),
            ],
        ),
        (
            "Findings per peer",
            "A",
            vec![
                sample(
                    &node_a(c1, &format!(r#",peer="192.0.2.2",to_node="b"{cause}"#)),
                    1.0,
                ),
                sample(&node_a(c1, &format!(r#",peer="198.51.100.9"{cause}"#)), 1.0),
            ],
        ),
        (
            rest,
            "A",
            vec![sample(&node_a(c1, ""), 2.5), sample(&node_a(c2, ""), 1.0)],
        ),
        (
            rest,
            "B",
            vec![sample(&node_a(c1, ""), 12.5), sample(&node_a(c2, ""), 1.0)],
        ),
        (
            rest,
            "C",
            vec![sample(&node_a(c1, ""), 0.2), sample(&node_a(c2, ""), 1.0)],
        ),
        (rest, "F", vec![sample(&node_a(c1, ""), 0.0)]),
    ]
    .into_iter()
    .map(|(title, ref_id, expected)| {
        serde_json::json!({
            "expr": grafana_expr(&dashboard_query(&d, title, ref_id), ".*"),
            "eval_time": "10m",
            "exp_samples": expected,
        })
    })
    .collect();

    let file = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            { "interval": "1m", "input_series": input, "promql_expr_test": link_tests },
            { "interval": "1m", "input_series": raw, "promql_expr_test": raw_tests },
        ],
    });
    let dir = TempDir::new("dashboard-test");
    let path = dir.0.join("dashboard.test.yaml");
    std::fs::write(&path, serde_norway::to_string(&file).unwrap()).unwrap();
    let (code, out, err) = run(Command::new("promtool").arg("test").arg("rules").arg(&path));
    assert_eq!(code, 0, "promtool test rules: {out}{err}");
    assert!(out.contains("SUCCESS"), "{out}{err}");
}
