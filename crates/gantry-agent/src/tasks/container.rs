//! A task's container config: the service spec and the image's config
//! merged (gantry-image's one builder), with Swarm's templates filled for
//! the task, its resources, security, resolution, ports, labels and mounts
//! (volumes made or found, binds checked on this node). Its secrets and
//! configs are not in it: they go to the helper apart (`StartRequest`).

use super::*;

impl Agent {
    pub(super) fn container_config(
        &self,
        a: &Assignment,
        svc: &Service,
        store: &Store,
        img: &LocalImage,
    ) -> Result<ContainerConfig, String> {
        // Where the task runs, as Nomad's NOMAD_* variables (the service's
        // own environment wins).
        let t = &a.task;
        let mut env: Vec<String> = vec![
            format!("GANTRY_NODE_HOSTNAME={}", self.hostname),
            format!("GANTRY_NODE_ID={}", self.node_id),
            format!("GANTRY_SERVICE_NAME={}", t.service),
            format!("GANTRY_TASK_ID={}", t.id),
            format!("GANTRY_TASK_SLOT={}", t.slot),
        ];
        let slot = if t.slot == 0 {
            self.node_id.clone()
        } else {
            t.slot.to_string()
        };
        // Swarm's templates, filled for this task.
        let tc = gantry_spec::template::Context::for_task(
            &t.service,
            &t.id,
            t.slot,
            &self.node_id,
            &self.hostname,
        );
        let fill = |v: &str| gantry_spec::template::expand(v, &tc);
        env.extend(
            svc.environment
                .iter()
                .map(|(k, v)| format!("{k}={}", fill(v))),
        );
        let overrides = Overrides {
            name: format!("{}.{slot}.{}", t.service, t.id),
            entrypoint: svc.entrypoint.clone(),
            cmd: svc.command.clone().unwrap_or_default(),
            env,
            workdir: svc.working_dir.clone(),
            user: svc.user.clone(),
            hostname: svc.hostname.as_deref().map(fill),
            stop_signal: svc.stop_signal.clone(),
            tty: false,
            stdin: false,
        };
        let mut c =
            container_config(store, &svc.image, img, &overrides).map_err(|e| e.to_string())?;
        c.network = self.network_mode(a);
        c.resources.memory = svc.limits.memory;
        c.resources.nano_cpus = svc.limits.nano_cpus;
        c.resources.pids = svc.limits.pids;
        c.read_only = svc.read_only;
        c.security = svc.security.clone();
        c.resolution = svc.resolution.clone();
        if let Some(size) = svc.log_max_size {
            c.log_max_size = size;
        }
        if let Some(n) = svc.log_max_files {
            // max-file counts the current file; the runtime keeps this many
            // besides it.
            c.log_max_files = n.saturating_sub(1);
        }
        c.ports = svc
            .ports
            .iter()
            .filter(|p| p.mode == PortMode::Host && p.protocol == "tcp")
            .filter_map(|p| {
                Some(PortMapping {
                    host_ip: p.host_ip,
                    host_port: p.published?,
                    container_port: p.target,
                })
            })
            .collect();
        c.stop_timeout = svc.stop_grace_period_ns.div_ceil(1_000_000_000);
        c.labels = svc.labels.clone();
        c.labels.insert(TASK_LABEL.into(), t.id.clone());
        c.labels.insert(SERVICE_LABEL.into(), t.service.clone());
        c.labels.insert(SLOT_LABEL.into(), t.slot.to_string());
        c.labels.insert(STACK_LABEL.into(), a.stack.clone());
        c.labels.insert(NODE_LABEL.into(), self.node_id.clone());
        let rt = self.rt.as_ref().ok_or("the runtime is not available")?;
        for (i, m) in svc.volumes.iter().enumerate() {
            let options = MountOptions {
                propagation: m.propagation.clone(),
                tmpfs_size: m.tmpfs_size,
                nocopy: m.volume.nocopy,
            };
            let mount = match m.kind {
                StackMount::Volume => {
                    let vols = rt.volumes();
                    let v = if m.source.is_empty() {
                        // Anonymous: the container's own, gone with it.
                        let vname = format!("{}-anon-{i}", c.id);
                        let labels = [(ANONYMOUS_LABEL.to_owned(), c.id.clone())].into();
                        vols.create(&vname, labels)
                            .map_err(|e| format!("volume {vname}: {e}"))?
                    } else if m.volume.external {
                        // It exists already; it is never made here.
                        let vname = fill(&m.volume_name(&a.stack));
                        vols.inspect(&vname).map_err(|_| {
                            format!(
                                "external volume {vname} does not exist on node {}",
                                self.hostname
                            )
                        })?
                    } else {
                        // Named volumes belong to their stack, as in Swarm.
                        let vname = fill(&m.volume_name(&a.stack));
                        let mut labels = m.volume.labels.clone();
                        labels.insert(STACK_LABEL.to_owned(), a.stack.clone());
                        // A replicated volume whose node died: made from
                        // this node's standby copy.
                        if vols.inspect(&vname).is_err()
                            && crate::replica::has(rt.data_dir(), &vname)
                        {
                            crate::replica::promote(
                                rt,
                                &vname,
                                labels.clone(),
                                m.volume.driver_opts.clone(),
                            )
                            .map_err(|e| format!("volume {vname}: {e}"))?;
                        }
                        vols.create_with(&vname, labels, m.volume.driver_opts.clone())
                            .map_err(|e| format!("volume {vname}: {e}"))?
                    };
                    Mount {
                        kind: MountKind::Volume { name: v.name },
                        source: v.mountpoint,
                        destination: m.target.clone(),
                        read_only: m.read_only,
                        options,
                    }
                }
                StackMount::Bind => {
                    let source = fill(&m.source);
                    if !std::path::Path::new(&source).exists() {
                        return Err(format!(
                            "bind source {source} does not exist on node {}",
                            self.hostname
                        ));
                    }
                    Mount {
                        kind: MountKind::Bind,
                        source: source.into(),
                        destination: m.target.clone(),
                        read_only: m.read_only,
                        options,
                    }
                }
                StackMount::Tmpfs => Mount {
                    kind: MountKind::Tmpfs,
                    source: Default::default(),
                    destination: m.target.clone(),
                    read_only: false,
                    options,
                },
            };
            c.mounts.push(mount);
        }
        Ok(c)
    }
}
