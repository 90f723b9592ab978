"""The deployment as one ComponentResource: results store, network volume, template, endpoint."""
from __future__ import annotations

from typing import Optional

import pulumi

from infra.bucket import ResultsStore, results_store
from infra.deploy_env import S3Values, compose_stack, compose_sizing, secret_keys
from infra.runpod_api.base import flashboot_mode, secret_reference
from infra.runpod_provider import (
    ApiArgs,
    Endpoint,
    NetworkVolume,
    RegistryCredential,
    RunpodSecret,
    Template,
    secret_base_name,
)
from infra.stack_config import NAMESPACE, StackSettings


class InfiniteTalkDeployment(pulumi.ComponentResource):
    """Everything `pulumi up` makes for one stack.

    Endpoint sizing (GPU pools from the gpu tier, workers, idle timeout, scaler, FlashBoot,
    execution timeout, volume size, data center, container disk) is read from the composed conf/
    tree, never from separate infra settings, so the worker and its endpoint cannot disagree. The
    image is the stack's `infinitetalk:image` (CI sets it from IMAGE_TAG), an immutable reference.
    Every secret value the worker needs is a `RunpodSecret`; the template's env refers to it.
    """

    endpoint_id: pulumi.Output[str]
    run_url: pulumi.Output[str]
    bucket: pulumi.Output[str]
    volume_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        *,
        api_key: pulumi.Input[str],
        opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        super().__init__("infinitetalk:deploy:Deployment", name, None, opts)
        stack = pulumi.get_stack()
        # sizing does not depend on the bucket, so it is known while the program runs (previews show it)
        overrides = settings.deploy_overrides()
        sizing_cfg = compose_sizing(overrides)
        d = sizing_cfg.deploy
        display = f"{d.endpoint_name}-{stack}"

        store: ResultsStore = results_store(name, settings, self)
        api = ApiArgs(
            settings.runpod_api, pulumi.Output.secret(api_key), settings.runpod_api_url, settings.runpod_graphql_url
        )

        self.volume = NetworkVolume(
            f"{name}-volume",
            volume_name=display,
            size_gb=d.volume_size_gb,
            datacenter=d.datacenter,
            api=api,
            # weights live here (tens of GB, slow to re-upload): `pulumi destroy` must not take it
            opts=pulumi.ResourceOptions(parent=self, protect=True, import_=settings.import_id("volume")),
        )

        public_base = store.public_base

        def compose(values: list) -> tuple[dict[str, str], dict[str, str]]:
            bucket, region, endpoint, access_key, secret_key = values
            _, env = compose_stack(
                overrides,
                S3Values(bucket=bucket, region=region, endpoint=endpoint, access_key=access_key,
                         secret_key=secret_key, public_base=public_base),
            )
            return env.plain, env.secret

        composed = pulumi.Output.all(
            store.bucket, store.region, store.endpoint, store.access_key_id, store.secret_access_key
        ).apply(compose)
        # the pair is secret because the keys are; the plain half holds none of them
        plain_env = pulumi.Output.unsecret(composed.apply(lambda pair: pair[0]))

        # each secret value becomes a Runpod secret; the template's env only refers to it by name
        self.secrets: dict[str, RunpodSecret] = {}
        references: dict[str, pulumi.Output[str]] = {}
        for key in secret_keys(overrides):
            secret = RunpodSecret(
                f"{name}-secret-{key.lower()}",
                secret_name=secret_base_name(display, key),
                value=pulumi.Output.secret(composed.apply(lambda pair, k=key: pair[1][k])),
                description=f"{key} for {display} (managed by Pulumi)",
                api=api,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.secrets[key] = secret
            references[key] = secret.runpod_name.apply(secret_reference)
        env = pulumi.Output.all(plain_env, pulumi.Output.all(**references)).apply(
            lambda both: {**both[0], **both[1]}
        )

        registry_id = None
        if settings.registry_username:
            self.registry = RegistryCredential(
                f"{name}-registry",
                registry_name=settings.registry_name,
                username=settings.registry_username,
                password=pulumi.Config(NAMESPACE).require_secret("registryPassword"),
                api=api,
                opts=pulumi.ResourceOptions(parent=self),
            )
            registry_id = self.registry.registry_id

        self.template = Template(
            f"{name}-template",
            template_name=display,
            image=d.image,
            container_disk_gb=d.container_disk_gb,
            env=env,
            registry_id=registry_id,
            api=api,
            opts=pulumi.ResourceOptions(parent=self, import_=settings.import_id("template")),
        )
        self.endpoint = Endpoint(
            f"{name}-endpoint",
            endpoint_name=display,
            template_id=self.template.template_id,
            template_revision=self.template.revision,
            template_image=self.template.image,
            template_env=self.template.env,
            gpu_pools=list(sizing_cfg.gpu.runpod_pools),
            gpu_count=int(sizing_cfg.gpu.parallel.ranks),  # one worker = all the ranks of one job
            workers_min=d.workers_min,
            workers_max=d.workers_max,
            idle_timeout_s=d.idle_timeout_s,
            scaler_type=d.scaler_type,
            scaler_value=d.scaler_value,
            flashboot=flashboot_mode(bool(d.flashboot)),
            execution_timeout_s=d.execution_timeout_s,
            network_volume_id=self.volume.volume_id,
            datacenters=[d.datacenter],
            min_cuda_version=settings.min_cuda_version,
            api=api,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.template, self.volume], import_=settings.import_id("endpoint")
            ),
        )
        self.endpoint_id = self.endpoint.endpoint_id
        self.run_url = self.endpoint.run_url
        self.bucket = store.bucket
        self.volume_id = self.volume.volume_id
        self.worker_access_key_id = store.access_key_id
        self.worker_secret_access_key = store.secret_access_key
        self.register_outputs(
            {
                "endpoint_id": self.endpoint_id,
                "run_url": self.run_url,
                "bucket": self.bucket,
                "volume_id": self.volume_id,
                "worker_access_key_id": self.worker_access_key_id,
                "worker_secret_access_key": self.worker_secret_access_key,
            }
        )
