//! `Plan::from_spec`: what each part of a spec becomes, and what is refused, by name.

use super::*;

fn spec(extra: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"/tmp/r"}},
        "process":{{"args":["/bin/true"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
        "linux":{{"namespaces":[{{"type":"mount"}},{{"type":"pid"}},{{"type":"network"}}]}}{extra}}}"#
    )
}

#[test]
fn minimal_spec_plans() {
    let p = Plan::from_json(&spec("")).unwrap();
    assert_eq!(p.process.args, vec!["/bin/true"]);
    assert!(p.loopback);
    assert_eq!(
        p.clone_flags,
        (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET) as u64
    );
    assert_eq!(p.root.source, RootSource::InPlace);
}

#[test]
fn init_annotation_true_idle_or_other() {
    let plan = |v: &str| {
        let p = Plan::from_json(&spec(&format!(
            r#","annotations":{{"run.pyrt.init":"{v}"}}"#
        )))
        .unwrap();
        (p.init, p.idle)
    };
    assert_eq!(plan("true"), (true, false));
    assert_eq!(plan("idle"), (true, true));
    assert_eq!(plan("yes"), (false, false));
    let p = Plan::from_json(&spec("")).unwrap();
    assert_eq!((p.init, p.idle), (false, false));
}

#[test]
fn mount_destination_with_dotdot_is_refused() {
    let e = Plan::from_json(&spec(
        r#","mounts":[{"destination":"/a/../../etc","type":"tmpfs","source":"tmpfs"}]"#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("mounts[0].destination"), "{e}");
}

#[test]
fn hostname_without_uts_namespace_is_refused() {
    let e = Plan::from_json(&spec(r#","hostname":"box""#)).unwrap_err();
    assert!(e.to_string().contains("uts"), "{e}");
}

#[test]
fn bind_needs_absolute_source() {
    let e = Plan::from_json(&spec(
        r#","mounts":[{"destination":"/x","type":"bind","source":"rel","options":["rbind"]}]"#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn overlay_annotation_is_validated() {
    let e = Plan::from_json(&spec(
        r#","annotations":{"run.pyrt.rootfs.overlay":"{\"lower\":[\"/a:b\"],\"upper\":\"/u\",\"work\":\"/w\"}"}"#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("overlay"), "{e}");
}

#[test]
fn a_scratch_layer_has_no_host_directories() {
    let with = |ov: &str| {
        let ann = format!(r#","annotations":{{"run.pyrt.rootfs.overlay":{ov:?}}}"#);
        Plan::from_json(&spec(&ann))
    };
    let p = with(r#"{"lower":["/l"],"scratch":true}"#).unwrap();
    match p.root.source {
        RootSource::Overlay(ov) => assert!(ov.scratch && ov.upper.as_os_str().is_empty()),
        other => panic!("{other:?}"),
    }
    let e = with(r#"{"lower":["/l"],"upper":"/u","work":"/w","scratch":true}"#).unwrap_err();
    assert!(e.to_string().contains("scratch"), "{e}");
    // The root's mount point holds its directories: no ',' to add options with.
    let comma = spec(
        r#","annotations":{"run.pyrt.rootfs.overlay":"{\"lower\":[\"/l\"],\"scratch\":true}"}"#,
    )
    .replacen("/tmp/r", "/tmp/r,lowerdir=/etc", 1);
    let e = Plan::from_json(&comma).unwrap_err();
    assert!(e.to_string().contains("free of ','"), "{e}");
    // Without scratch the directories are needed.
    assert!(with(r#"{"lower":["/l"]}"#).is_err());
}

#[test]
fn sysctls_only_namespaced_and_with_their_namespace() {
    let ok = Plan::from_json(&spec(
        r#","linux2":1"#.replace(",\"linux2\":1", "").as_str(),
    ));
    assert!(ok.is_ok());
    let with = |ns: &str, key: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"/r"}},"process":{{"args":["x"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
            "linux":{{"namespaces":[{{"type":"mount"}}{ns}],"sysctl":{{"{key}":"1"}}}}}}"#
        )
    };
    assert!(Plan::from_json(&with(r#",{"type":"network"}"#, "net.ipv4.ip_forward")).is_ok());
    assert!(Plan::from_json(&with("", "net.ipv4.ip_forward")).is_err());
    assert!(Plan::from_json(&with(r#",{"type":"ipc"}"#, "kernel.shmmax")).is_ok());
    let e = Plan::from_json(&with(r#",{"type":"ipc"}"#, "kernel.panic")).unwrap_err();
    assert!(e.to_string().contains("would change the host"), "{e}");
}

#[test]
fn no_mount_namespace_is_refused() {
    let s = r#"{"ociVersion":"1.0.2","root":{"path":"/r"},"process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{"namespaces":[]}}"#;
    assert!(Plan::from_json(s).is_err());
}

fn rules_of(linux: &str) -> Result<Resources, PlanError> {
    let text = format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"/r"}},"process":{{"args":["x"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
        "linux":{linux}}}"#
    );
    cgroup_resources(&serde_json::from_str(&text).unwrap())
}

#[test]
fn device_rules_keep_their_order_then_what_every_container_needs() {
    let r = rules_of(
        r#"{"resources":{"devices":[{"allow":false,"access":"rwm"},
            {"allow":true,"type":"c","major":10,"minor":237,"access":"r"}]},
            "devices":[{"path":"/dev/mine","type":"b","major":7,"minor":0}]}"#,
    )
    .unwrap();
    let lines: Vec<(bool, String)> = r.devices.iter().map(|d| (d.allow, d.line())).collect();
    assert_eq!(lines[0], (false, "a".into()));
    assert_eq!(lines[1], (true, "c 10:237 r".into()));
    assert!(lines.contains(&(true, "c 1:3 rwm".into())));
    assert!(lines.contains(&(true, "c 136:* rwm".into())));
    assert_eq!(lines.last().unwrap(), &(true, "b 7:0 rwm".into()));
    // Device rules alone ask for no cgroup path (runc spec's deny-all).
    assert!(!r.limits_anything());
    assert!(rules_of("{}").unwrap().devices.is_empty());
}

#[test]
fn bad_device_rules_are_refused_by_field() {
    for (rule, field) in [
        (
            r#"{"allow":true,"type":"c","access":"rwx"}"#,
            "devices[0].access",
        ),
        (
            r#"{"allow":true,"type":"c","access":""}"#,
            "devices[0].access",
        ),
        (
            r#"{"allow":true,"type":"p","access":"r"}"#,
            "devices[0].type",
        ),
        (
            r#"{"allow":true,"type":"c","major":-2,"access":"r"}"#,
            "devices[0].major",
        ),
        (
            r#"{"allow":true,"type":"c","minor":99999999999,"access":"r"}"#,
            "devices[0].minor",
        ),
    ] {
        let e = rules_of(&format!(r#"{{"resources":{{"devices":[{rule}]}}}}"#)).unwrap_err();
        assert!(e.to_string().contains(field), "{rule}: {e}");
    }
}

#[test]
fn rootfs_propagation_is_read_and_checked() {
    let text = |prop: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"/r"}},
            "process":{{"args":["x"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
            "linux":{{"namespaces":[{{"type":"mount"}}],"rootfsPropagation":"{prop}"}}}}"#
        )
    };
    let p = Plan::from_json(&text("rshared")).unwrap();
    assert_eq!(p.root_propagation, libc::MS_SHARED | libc::MS_REC);
    let p = Plan::from_json(&text("unbindable")).unwrap();
    assert_eq!(p.root_propagation, libc::MS_UNBINDABLE);
    for bad in ["ro", "sharedd", ""] {
        let e = Plan::from_json(&text(bad)).unwrap_err();
        assert!(e.to_string().contains("rootfsPropagation"), "{bad}: {e}");
    }
    assert_eq!(Plan::from_json(&spec("")).unwrap().root_propagation, 0);
}

fn userns_spec(mounts: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"/tmp/r"}},
        "process":{{"args":["/bin/true"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
        "mounts":[{mounts}],
        "linux":{{"namespaces":[{{"type":"mount"}},{{"type":"user"}}],
          "uidMappings":[{{"containerID":0,"hostID":100000,"size":65536}}],
          "gidMappings":[{{"containerID":0,"hostID":100000,"size":65536}}]}}}}"#
    )
}

#[test]
fn idmap_takes_the_mounts_mappings_or_the_containers() {
    let own = r#"{"destination":"/a","type":"bind","source":"/s","options":["rbind","ridmap"],
        "uidMappings":[{"containerID":0,"hostID":7,"size":1}],
        "gidMappings":[{"containerID":0,"hostID":8,"size":1}]}"#;
    let theirs = r#"{"destination":"/b","type":"bind","source":"/s","options":["bind","idmap"]}"#;
    let p = Plan::from_json(&userns_spec(&format!("{own},{theirs}"))).unwrap();
    let a = p.mounts[0].idmap.as_ref().unwrap();
    assert_eq!(
        (a.maps.uid.clone(), a.maps.gid.clone()),
        (vec![(0, 7, 1)], vec![(0, 8, 1)])
    );
    assert!(a.recursive && a.fd.is_none());
    let b = p.mounts[1].idmap.as_ref().unwrap();
    assert_eq!(Some(&b.maps), p.id_maps.as_ref());
    assert!(!b.recursive);
    assert!(!p.receives_host_mounts() && p.inherited_fds().is_empty());
}

#[test]
fn idmap_that_cannot_be_made_names_its_field() {
    let cases = [
        (
            r#"{"destination":"/a","type":"tmpfs","source":"t","options":["idmap"]}"#,
            "mounts[0].options",
        ),
        (
            r#"{"destination":"/a","type":"bind","source":"/s","options":["bind"],
            "uidMappings":[{"containerID":0,"hostID":7,"size":1}]}"#,
            "mounts[0].gidMappings",
        ),
        (
            r#"{"destination":"/a","type":"bind","source":"/s","options":["bind"],
            "uidMappings":[{"containerID":0,"hostID":7,"size":0}],
            "gidMappings":[{"containerID":0,"hostID":7,"size":1}]}"#,
            "mounts[0].uidMappings",
        ),
    ];
    for (m, field) in cases {
        let e = Plan::from_json(&userns_spec(m)).unwrap_err();
        assert!(e.to_string().contains(field), "{m}: {e}");
    }
    // idmap with no mappings and no user namespace to take them from.
    let e = Plan::from_json(&spec(
        r#","mounts":[{"destination":"/a","type":"bind","source":"/s","options":["bind","idmap"]}]"#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("user namespace"), "{e}");
}

#[test]
fn slave_propagation_keeps_the_namespace_a_slave() {
    let p = Plan::from_json(&spec(r#","mounts":[{"destination":"/a","type":"bind","source":"/s","options":["rbind","rslave"]}]"#)).unwrap();
    assert!(p.receives_host_mounts());
    let p = Plan::from_json(&spec(r#","mounts":[{"destination":"/a","type":"bind","source":"/s","options":["rbind","rprivate"]}]"#)).unwrap();
    assert!(!p.receives_host_mounts());
}
