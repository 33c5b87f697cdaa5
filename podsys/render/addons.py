"""Inventory variables for the add-on layers (accounting, storage, training). Pure.

The accounting and training layers also decide the slurm.conf lines they need
(`addon_slurm_config`); render puts them, with every other extra line, in
`podsys_slurm.extra_config`, so the slurm role's template needs no add-on knowledge."""

from __future__ import annotations

from podsys.bundle.addon_wheels import wheel_sets, wheelhouse_for
from podsys.cluster.model import Cluster
from podsys.cluster.schema import SlurmLimits
from podsys.render.storage import storage_vars
from podsys.render.training import training_vars
from podsys.layout import MLFLOW_PORT, MODELS_HTTPS_PORT, SLURMDBD_PORT
from podsys.render.notebooks import web_layer_vars, web_names

# Source: slurm.conf(5) (AccountingStorage*, PriorityType, PreemptType/PreemptMode) and the
# Slurm accounting guide, https://slurm.schedmd.com/accounting.html ("limits" implies associations).
ACCOUNTING_ENFORCE = "associations,limits,qos"


def limits_tres(limits: SlurmLimits) -> dict[str, str]:
    """sacctmgr settings for a team's or a QOS's limits, as `Key: value` (empty: no limit)."""
    tres = []
    if limits.cpus is not None:
        tres.append(f"cpu={limits.cpus}")
    if limits.memory_mb is not None:
        tres.append(f"mem={limits.memory_mb}")
    if limits.nodes is not None:
        tres.append(f"node={limits.nodes}")
    if limits.gpus is not None:
        tres.append(f"gres/gpu={limits.gpus}")
    out = {"GrpTRES": ",".join(tres)}
    out["GrpJobs"] = "" if limits.running_jobs is None else str(limits.running_jobs)
    out["GrpSubmitJobs"] = "" if limits.submitted_jobs is None else str(limits.submitted_jobs)
    out["MaxWall"] = limits.max_wall or ""
    return out


def accounting_state(cluster: Cluster) -> dict:
    """The desired accounting database content, in the shape the head's sync script reads."""
    m = cluster.manifest
    qos = [
        {"name": q.name, "Priority": str(q.priority), "Preempt": ",".join(q.preempt),
         "PreemptMode": q.preempt_mode, **limits_tres(q.limits)}
        for q in m.accounts.qos
    ]
    teams = [
        {"name": t.name, "Description": t.description or t.name, "Fairshare": str(t.fairshare),
         "QOS": ",".join(t.qos or ["normal"]), "DefaultQOS": t.default_qos or "",
         "users": list(t.users), **limits_tres(t.limits)}
        for t in m.accounts.teams
    ]
    return {"cluster": cluster.name, "qos": qos, "teams": teams}


def accounting_slurm_config(cluster: Cluster) -> dict[str, str]:
    m = cluster.manifest
    config = {
        "AccountingStorageType": "accounting_storage/slurmdbd",
        "AccountingStorageHost": m.head.hostname,
        "AccountingStoragePort": str(SLURMDBD_PORT),
        "AccountingStorageEnforce": ACCOUNTING_ENFORCE,
        "JobAcctGatherFrequency": "30",
        "PriorityType": "priority/multifactor",
        "PriorityWeightFairshare": "10000",
        "PriorityWeightQOS": "10000",
        "PriorityWeightAge": "1000",
    }
    uses_gpus = any(cluster.profile_of(n).has_gpu for n in cluster.nodes) or any(
        lim.gpus is not None for lim in [t.limits for t in m.accounts.teams] + [q.limits for q in m.accounts.qos])
    if uses_gpus:
        # GrpTRES=gres/gpu only counts when the TRES is tracked. Source: slurm.conf(5), AccountingStorageTRES.
        config["AccountingStorageTRES"] = "gres/gpu"
    if any(q.preempt for q in m.accounts.qos):
        config["PreemptType"] = "preempt/qos"
        config["PreemptMode"] = "REQUEUE"
    return config


def models_vars(cluster: Cluster) -> dict:
    """The models role's settings: wheel directories (next to the manifest, else the offline
    bundle's: podsys/bundle/addon_wheels.py wheelhouse_for), the Host
    headers and origins MLflow's security middleware must accept behind nginx (its default is
    localhost and private addresses: `mlflow server --help`, --allowed-hosts), and the networks
    whose jobs log without a login (the nodes' provision network)."""
    m = cluster.manifest
    base = cluster.manifest_path.parent
    server, client = wheel_sets(["models"])
    names = web_names(cluster)
    return {
        "wheelhouse": str(wheelhouse_for(m, base, server).resolve()),
        "client_wheelhouse": str(wheelhouse_for(m, base, client).resolve()),
        "artifact_dir": m.models.artifact_dir,
        "https_port": MODELS_HTTPS_PORT,
        "mlflow_port": MLFLOW_PORT,
        "allowed_hosts": [p for n in names for p in (n, f"{n}:*")] + ["localhost:*", "127.0.0.1:*"],
        "cors_origins": [f"https://{n}:{MODELS_HTTPS_PORT}" for n in names],
        "trusted_networks": [str(m.networks.provision.cidr)],
    }


def addon_vars(cluster: Cluster) -> dict:
    """group_vars/all entries for the add-on layers the manifest enables (none otherwise, so a
    cluster without add-ons renders exactly as before)."""
    m = cluster.manifest
    out: dict = {}
    if "accounting" in m.layers:
        out["podsys_accounts"] = accounting_state(cluster)
    if "storage" in m.layers:
        out["podsys_storage"] = m.storage.model_dump(mode="json")
        out.update(storage_vars(cluster))
    if "training" in m.layers:
        out["podsys_training"] = m.training.model_dump(mode="json")
        out.update(training_vars(cluster))
    if "models" in m.layers:
        out["podsys_models"] = models_vars(cluster)
    out.update(web_layer_vars(cluster))  # web_tls and notebooks (podsys/render/notebooks.py)
    return out


def addon_slurm_config(cluster: Cluster) -> dict[str, str]:
    """The slurm.conf lines the enabled add-on layers need."""
    m = cluster.manifest
    config: dict[str, str] = {}
    if "accounting" in m.layers:
        config.update(accounting_slurm_config(cluster))
    if "training" in m.layers:
        # A node that stops answering is DOWN after this long and its --requeue jobs go back to
        # the queue (the slurm template writes SlurmdTimeout from here instead of its default).
        config["SlurmdTimeout"] = str(m.training.node_timeout)
    return config
