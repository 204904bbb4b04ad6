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
    "vxtrace_rx_undelivered_packets_total",
    "vxtrace_link_share",
    "vxtrace_link_peers",
    "vxtrace_peers",
];

/// The recording rules the dashboard is built on: the links' loss (each
/// labelled from_node, to_node, family, and cluster and job where the
/// scraped series have them; recorded only where it is 1 % or more) and
/// each node's VTEPs. The rules record no traffic per link: the dashboard
/// computes it from the selected nodes' own series.
const RULES: &[&str] = &[
    "vxtrace:link_path_loss:ratio_rate5m",
    "vxtrace:link_receiver_loss:ratio_rate5m",
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
    "family",
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
        r#"vxtrace:link_path_loss:ratio_rate5m{from_node=~"${node}"} / ignoring (to_vtep) group_left vxtrace_tx_encap_packets_total"#,
    );
    assert_eq!(
        n.metrics,
        [
            "vxtrace:link_path_loss:ratio_rate5m",
            "vxtrace_tx_encap_packets_total"
        ]
    );
    assert_eq!(n.labels, ["from_node", "to_vtep"]);
    // A raw string holding a formatted variable, its braces included.
    let n = promql_names(
        r#"rate(vxtrace_rx_nic_packets_total{peer=~`${vtep:regex}`, instance=~`${instance:regex}`}[5m]) * on (peer) vxtrace_node_info"#,
    );
    assert_eq!(
        n.metrics,
        ["vxtrace_rx_nic_packets_total", "vxtrace_node_info"]
    );
    assert_eq!(n.labels, ["peer", "instance", "peer"]);
    assert_eq!(n.functions, ["rate"]);
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
    // The matrix, the per-link timelines (on both ends' per-peer
    // counters), drops, findings and one-way peers are all there.
    for needed in RULES.iter().chain(&[
        "vxtrace_tx_encap_packets_total",
        "vxtrace_rx_nic_packets_total",
        "vxtrace_rx_undelivered_packets_total",
        "vxtrace_drops_total",
        "vxtrace_peer_finding",
        "vxtrace_peer_one_way",
        "vxtrace_node_info",
    ]) {
        assert!(used.contains(*needed), "no panel uses {needed}");
    }
}

/// A query variable's `label_values(SELECTOR, LABEL)`, checked: its
/// datasource is the dashboard's, and the metric and labels it names are
/// known.
fn label_values_query(v: &Value) -> String {
    let name = v["name"].as_str().unwrap_or("?");
    assert_eq!(v["type"], "query", "{name}");
    assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
    let query = v["query"]["query"]
        .as_str()
        .or_else(|| v["query"].as_str())
        .unwrap_or_else(|| panic!("the {name} variable's query"))
        .to_string();
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{name}: label_values(...): {query}"));
    let (selector, label) = inner.rsplit_once(',').expect("selector, label");
    let mut names = promql_names(selector);
    assert_eq!(names.metrics.len(), 1, "{name}: {query}");
    names.labels.push(label.trim().into());
    check_names(&format!("the {name} variable"), &names);
    query
}

/// The datasource, the node the user picks, and the hidden variables the
/// link panels restrict their selectors with, derived from the node:
/// its scrape targets and its VTEP addresses, always at All, which Grafana
/// expands to the list of the values (a custom all value, such as `.*`,
/// would stand for every node).
#[test]
fn dashboard_variables_are_the_datasource_and_the_node() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("variables");
    let position = |name: &str| {
        vars.iter()
            .position(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a {name} variable"))
    };
    let ds = &vars[position("datasource")];
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let node = &vars[position("node")];
    assert_eq!(
        label_values_query(node),
        "label_values(vxtrace_node_info, node)"
    );
    assert_eq!(node["hide"], 0, "the node is picked");
    for name in ["instance", "vtep"] {
        let v = &vars[position(name)];
        assert_eq!(
            label_values_query(v),
            format!(r#"label_values(vxtrace_node_info{{node=~"$node"}}, {name})"#)
        );
        // After the node: Grafana resolves the variables in order and
        // refreshes these when the node changes.
        assert!(position(name) > position("node"), "{name} before node");
        assert!(
            [1, 2].contains(&v["refresh"].as_u64().unwrap_or(0)),
            "{name}: {v}"
        );
        assert_eq!(v["hide"], 2, "{name} is hidden");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        assert!(
            v["allValue"].as_str().unwrap_or("").is_empty(),
            "{name}: All must expand to its values, not {}",
            v["allValue"]
        );
        assert_eq!(
            v["current"]["value"],
            serde_json::json!(["$__all"]),
            "{name}"
        );
    }
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

/// The nodes of the tests' inputs: (cluster, node, VTEP addresses, link
/// share, minutes of series from 0: 20 for scraped throughout, 3 for not
/// scraped for the last 7 minutes at 10m). Each node's scrape target is
/// `NODE:9478`: node a has the same one in both clusters.
const NODES: &[(&str, &str, &[&str], &str, u32)] = &[
    ("c1", "a", &["192.0.2.1", "2001:db8::1"], "1", 20),
    ("c1", "b", &["192.0.2.2", "2001:db8::2"], "1", 20),
    ("c1", "c", &["192.0.2.3"], "1", 20),
    ("c1", "d", &["192.0.2.4"], "1", 20),
    ("c1", "e", &["192.0.2.5"], "1", 3),
    ("c1", "f", &["192.0.2.6"], "0.5", 20),
    ("c2", "a", &["192.0.2.1"], "1", 20),
    ("c2", "b", &["192.0.2.2"], "1", 20),
];

/// A multi-value variable in Grafana's `regex` format: each value
/// regex-escaped (its `escapeRegex`), several as `(v1|v2)`.
fn grafana_regex(values: &BTreeSet<String>) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .flat_map(|c| {
                    let special = "\\^$*+?.()|[]{}/".contains(c);
                    [special.then_some('\\'), Some(c)].into_iter().flatten()
                })
                .collect()
        })
        .collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        _ => format!("({})", escaped.join("|")),
    }
}

/// A dashboard query as Grafana sends it to Prometheus with `node` selected
/// (a node's name, as in a row repeated per node, or `.*` for All; the
/// dashboard puts `$node` in regex matchers only), a 5m rate interval and a
/// 1h time range. The hidden variables derived from the node take the
/// values of label_values(vxtrace_node_info{node=~"$node"}, ...) over the
/// tests' NODES, all of them (they stand at All, without a custom all
/// value): its scrape targets (`instance`) and its VTEP addresses
/// (`vtep`). Only label_replace's `$1` remains.
fn grafana_expr(expr: &str, node: &str) -> String {
    let mut instances = BTreeSet::new();
    let mut vteps = BTreeSet::new();
    for (_, name, addresses, _, _) in NODES {
        if node == ".*" || *name == node {
            instances.insert(format!("{name}:9478"));
            vteps.extend(addresses.iter().map(|a| a.to_string()));
        }
    }
    assert!(!vteps.is_empty(), "no node {node}");
    let e = expr
        .replace("${instance:regex}", &grafana_regex(&instances))
        .replace("${vtep:regex}", &grafana_regex(&vteps))
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

#[test]
fn grafana_expr_fills_in_the_hidden_variables() {
    assert_eq!(
        grafana_expr(
            r#"x{instance=~`${instance:regex}`, peer=~`${vtep:regex}`, node=~"$node"}"#,
            "a"
        ),
        r#"x{instance=~`a:9478`, peer=~`(192\.0\.2\.1|2001:db8::1)`, node=~"a"}"#
    );
    assert_eq!(
        grafana_expr("x{peer=~`${vtep:regex}`}", "c"),
        r"x{peer=~`192\.0\.2\.3`}"
    );
    assert_eq!(
        grafana_regex(&BTreeSet::from(["[2001:db8::1]:9478".to_string()])),
        r"\[2001:db8::1\]:9478"
    );
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

/// The scanner of a PromQL selector's braces: the text up to the `}` that
/// closes it, past strings (a Grafana variable in a raw string has braces).
fn selector_at(expr: &str) -> Option<&str> {
    let body = expr.strip_prefix('{')?;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None if c == '}' => return Some(&body[..i]),
            None => {}
        }
    }
    None
}

/// The per-peer counters every node exports for every link: a cluster of
/// 1,000 nodes has a million series of each.
const LINK_COUNTERS: &[&str] = &[
    "vxtrace_tx_encap_packets_total",
    "vxtrace_rx_nic_packets_total",
    "vxtrace_rx_undelivered_packets_total",
];

/// Every selector of the per-link counters is restricted to the selected
/// nodes' links by the hidden variables: the selected nodes' own series
/// (by their scrape targets) or the other nodes' series about them (peer
/// one of their VTEP addresses), never every node's; the link panels use
/// both.
#[test]
fn dashboard_selects_only_the_selected_nodes_links() {
    let d = dashboard();
    let own = "instance=~`${instance:regex}`";
    let about = "peer=~`${vtep:regex}`";
    let mut restricted = 0;
    for (title, ref_id, expr) in dashboard_queries(&d) {
        for metric in LINK_COUNTERS {
            for (at, _) in expr.match_indices(metric) {
                let selector = selector_at(&expr[at + metric.len()..])
                    .unwrap_or_else(|| panic!("{title} {ref_id}: {metric} without a selector"));
                assert!(
                    selector.contains(own) || selector.contains(about),
                    "{title} {ref_id}: {metric}{{{selector}}} selects every node's links"
                );
                restricted += 1;
            }
        }
    }
    assert!(restricted >= 40, "{restricted} selectors");
    for title in [
        "Link state from $node",
        "Link state to $node",
        "Link state from $node over time",
        "Link state to $node over time",
        "Traffic from $node, per link",
    ] {
        let all: String = dashboard_queries(&d)
            .into_iter()
            .filter(|(t, _, _)| t == title)
            .map(|(_, _, e)| e)
            .collect();
        assert!(all.contains(own) && all.contains(about), "{title}");
    }
    assert_eq!(
        selector_at(r#"{a="}", b=~`${x:regex}`} rest"#),
        Some(r#"a="}", b=~`${x:regex}`"#)
    );
}

/// The dashboard's link states, rates and losses, evaluated by promtool on
/// the nodes' own series (and the loss recordings where the rules would
/// record them: 1 % or more, at more than 0.2 packets/s): two clusters
/// sharing node names, addresses and node a's scrape target; the selected
/// node a (dual-stack) and its peers b (IPv4 with path loss towards b and
/// receiver loss from b, IPv6 healthy both ways), c (receiver loss 2 %
/// towards c, path loss 2.5 % from c: recorded, under 5 %; receiver loss
/// under 1 % from c: not recorded, counted in what is delivered), d (series at
/// zero rate towards d, none from d), e (not scraped for the last 7
/// minutes: no series, still known), f (exports only a share of its
/// links, without a's: only a's end of a -> f; f -> a at zero rate); a's
/// link to itself and a link between two other nodes (b -> c) are left
/// out of the link tables. In c2, a -> b loses 0.5 % on the receiver: not
/// recorded, delivered all the same less what was lost. The findings per
/// cause and the traffic summed into the rest on vxtrace's own series, in
/// the same two clusters.
#[allow(
    clippy::too_many_lines,
    reason = "tests are exempt: a test's steps and its table of cases read in order"
)]
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
    // Each node's node_info per VTEP, the rule's vtep:info of it, and its
    // link share.
    let mut input = Vec::new();
    for (cluster, node, addresses, share, minutes) in NODES {
        let target = format!(r#"cluster="{cluster}",job="vxtrace",instance="{node}:9478""#);
        for address in *addresses {
            let family = if address.contains(':') {
                "ipv6"
            } else {
                "ipv4"
            };
            input.push(serde_json::json!({
                "series": format!(
                    r#"vxtrace_node_info{{{target},node="{node}",vtep="{address}"}}"#
                ),
                "values": format!("1x{minutes}"),
            }));
            input.push(serde_json::json!({
                "series": format!(
                    r#"vxtrace:vtep:info{{{target},node="{node}",vtep="{address}",family="{family}"}}"#
                ),
                "values": format!("1x{minutes}"),
            }));
        }
        input.push(serde_json::json!({
            "series": format!("vxtrace_link_share{{{target}}}"),
            "values": format!("{share}x{minutes}"),
        }));
    }
    // The per-peer counters: (cluster, the node that counts, counter,
    // peer, packets a minute).
    let counters = [
        // a -> b, IPv4: 10/s sent, 5/s arrive; IPv6: 10/s, all arrive.
        ("c1", "a", "tx_encap", "192.0.2.2", "600"),
        ("c1", "b", "rx_nic", "192.0.2.1", "300"),
        ("c1", "a", "tx_encap", "2001:db8::2", "600"),
        ("c1", "b", "rx_nic", "2001:db8::1", "600"),
        // a -> c: 10/s arrive, 0.2/s not delivered.
        ("c1", "a", "tx_encap", "192.0.2.3", "600"),
        ("c1", "c", "rx_nic", "192.0.2.1", "600"),
        ("c1", "c", "rx_undelivered", "192.0.2.1", "12"),
        // a -> d: both ends' series, at zero rate.
        ("c1", "a", "tx_encap", "192.0.2.4", "0"),
        ("c1", "d", "rx_nic", "192.0.2.1", "0"),
        // a -> f: f does not export it.
        ("c1", "a", "tx_encap", "192.0.2.6", "600"),
        // a -> a.
        ("c1", "a", "tx_encap", "192.0.2.1", "600"),
        ("c1", "a", "rx_nic", "192.0.2.1", "600"),
        // What a sends to and receives from the peers summed into the rest.
        ("c1", "a", "tx_encap", "other_peers", "150"),
        ("c1", "a", "rx_nic", "other_peers", "60"),
        // b -> a, IPv4: 10/s arrive, 7.5/s not delivered; IPv6: healthy.
        ("c1", "b", "tx_encap", "192.0.2.1", "600"),
        ("c1", "a", "rx_nic", "192.0.2.2", "600"),
        ("c1", "a", "rx_undelivered", "192.0.2.2", "450"),
        ("c1", "b", "tx_encap", "2001:db8::1", "600"),
        ("c1", "a", "rx_nic", "2001:db8::2", "600"),
        // c -> a: 10/s sent, 9.75/s arrive, 0.0625/s not delivered.
        ("c1", "c", "tx_encap", "192.0.2.1", "600"),
        ("c1", "a", "rx_nic", "192.0.2.3", "585"),
        ("c1", "a", "rx_undelivered", "192.0.2.3", "3.75"),
        // f -> a: both ends' series, at zero rate.
        ("c1", "f", "tx_encap", "192.0.2.1", "0"),
        ("c1", "a", "rx_nic", "192.0.2.6", "0"),
        // b -> c: none of a's.
        ("c1", "b", "tx_encap", "192.0.2.3", "600"),
        ("c1", "c", "rx_nic", "192.0.2.2", "600"),
        // c2's a -> b: 10/s arrive, 0.05/s not delivered.
        ("c2", "a", "tx_encap", "192.0.2.2", "600"),
        ("c2", "b", "rx_nic", "192.0.2.1", "600"),
        ("c2", "b", "rx_undelivered", "192.0.2.1", "3"),
    ];
    for (cluster, node, counter, peer, per_minute) in counters {
        input.push(serde_json::json!({
            "series": format!(
                r#"vxtrace_{counter}_packets_total{{cluster="{cluster}",job="vxtrace",instance="{node}:9478",peer="{peer}"}}"#
            ),
            "values": format!("0+{per_minute}x20"),
        }));
    }
    // The losses the rules record from those: 1 % or more, the sender
    // (path) or the receiver's NIC (receiver) above 0.2 packets/s.
    let pair = |cluster: &str, from: &str, to: &str| {
        format!(r#"cluster="{cluster}",job="vxtrace",from_node="{from}",to_node="{to}""#)
    };
    for (loss, cluster, from, to, family, value) in [
        // 1 - 5/10.
        ("path_loss", "c1", "a", "b", "ipv4", "0.5"),
        // 1 - 9.75/10.
        ("path_loss", "c1", "c", "a", "ipv4", "0.025"),
        // 0.2/10.
        ("receiver_loss", "c1", "a", "c", "ipv4", "0.02"),
        // 7.5/10 (c -> a's 0.0625/9.75 is under 1 %).
        ("receiver_loss", "c1", "b", "a", "ipv4", "0.75"),
    ] {
        input.push(series(
            &format!("vxtrace:link_{loss}:ratio_rate5m"),
            &format!(r#"{},family="{family}""#, pair(cluster, from, to)),
            value,
        ));
    }
    let samples = |expected: &[(&str, &str, &str, f64)]| -> Vec<Value> {
        expected
            .iter()
            .map(|(cluster, from, to, v)| sample(&pair(cluster, from, to), *v))
            .collect()
    };
    // 3 loss, 2 no loss, 1 no traffic, 0 no series.
    let states_from_a = samples(&[
        ("c1", "a", "b", 3.0),
        ("c1", "a", "c", 2.0),
        ("c1", "a", "d", 1.0),
        ("c1", "a", "e", 0.0),
        ("c1", "a", "f", 0.0),
        ("c2", "a", "b", 2.0),
    ]);
    let states_to_a = samples(&[
        ("c1", "b", "a", 3.0),
        ("c1", "c", "a", 2.0),
        ("c1", "f", "a", 1.0),
        ("c1", "d", "a", 0.0),
        ("c1", "e", "a", 0.0),
        ("c2", "b", "a", 0.0),
    ]);
    let from = "Link state from $node";
    let to = "Link state to $node";
    let traffic = "Traffic from $node, per link";
    let expected = [
        (from, "A", states_from_a.clone()),
        ("Link state from $node over time", "A", states_from_a),
        (to, "A", states_to_a.clone()),
        ("Link state to $node over time", "A", states_to_a),
        // Path and receiver loss, as recorded.
        (from, "B", samples(&[("c1", "a", "b", 0.5)])),
        (from, "C", samples(&[("c1", "a", "c", 0.02)])),
        (to, "B", samples(&[("c1", "c", "a", 0.025)])),
        (to, "C", samples(&[("c1", "b", "a", 0.75)])),
        // Sent, arrived and delivered, the families together.
        (
            from,
            "D",
            samples(&[
                ("c1", "a", "b", 20.0),
                ("c1", "a", "c", 10.0),
                ("c1", "a", "d", 0.0),
                ("c1", "a", "f", 10.0),
                ("c2", "a", "b", 10.0),
            ]),
        ),
        (
            from,
            "E",
            samples(&[
                ("c1", "a", "b", 15.0),
                ("c1", "a", "c", 10.0),
                ("c1", "a", "d", 0.0),
                ("c2", "a", "b", 10.0),
            ]),
        ),
        (
            from,
            "F",
            samples(&[
                ("c1", "a", "b", 15.0),
                ("c1", "a", "c", 9.8),
                ("c1", "a", "d", 0.0),
                ("c2", "a", "b", 9.95),
            ]),
        ),
        (
            to,
            "D",
            samples(&[
                ("c1", "b", "a", 20.0),
                ("c1", "c", "a", 10.0),
                ("c1", "f", "a", 0.0),
            ]),
        ),
        (
            to,
            "E",
            samples(&[
                ("c1", "b", "a", 20.0),
                ("c1", "c", "a", 9.75),
                ("c1", "f", "a", 0.0),
            ]),
        ),
        (
            to,
            "F",
            samples(&[
                ("c1", "b", "a", 12.5),
                ("c1", "c", "a", 9.6875),
                ("c1", "f", "a", 0.0),
            ]),
        ),
        // Over time, every link of a's, a -> a included (a selected node
        // may be another's peer).
        (
            traffic,
            "A",
            samples(&[
                ("c1", "a", "a", 10.0),
                ("c1", "a", "b", 20.0),
                ("c1", "a", "c", 10.0),
                ("c1", "a", "d", 0.0),
                ("c1", "a", "f", 10.0),
                ("c2", "a", "b", 10.0),
            ]),
        ),
        (
            traffic,
            "B",
            samples(&[
                ("c1", "a", "a", 10.0),
                ("c1", "a", "b", 15.0),
                ("c1", "a", "c", 10.0),
                ("c1", "a", "d", 0.0),
                ("c2", "a", "b", 10.0),
            ]),
        ),
        (
            traffic,
            "C",
            samples(&[
                ("c1", "a", "a", 10.0),
                ("c1", "a", "b", 15.0),
                ("c1", "a", "c", 9.8),
                ("c1", "a", "d", 0.0),
                ("c2", "a", "b", 9.95),
            ]),
        ),
    ];
    let link_tests: Vec<Value> = expected
        .into_iter()
        .map(|(title, ref_id, expected)| {
            serde_json::json!({
                "expr": grafana_expr(&dashboard_query(&d, title, ref_id), "a"),
                "eval_time": "10m",
                "exp_samples": expected,
            })
        })
        .collect();

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
