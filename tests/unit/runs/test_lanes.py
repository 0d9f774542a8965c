"""What a worker announces as its lane's provider cap, and the limits `farm estimate` plans with."""

from __future__ import annotations

from farm.config.settings import Settings
from farm.runs.lanes import announcement, configured_limits, provider_cap


def test_gpu_cap_is_the_affordable_pods_times_jobs_per_pod() -> None:
    roomy = Settings(gpu_max_pods=3, gpu_max_usd_per_hr=5.0, gpu_expected_usd_per_hr=1.19, gpu_jobs_per_pod=2)
    assert provider_cap("gpu", roomy) == 3 * 2, "three pods fit $5/h at $1.19/h"
    tight = roomy.model_copy(update={"gpu_max_usd_per_hr": 2.5})
    assert provider_cap("gpu", tight) == 2 * 2, "only two pods fit $2.50/h"


def test_cloud_cap_is_fals_in_flight_limit_and_post_has_none() -> None:
    settings = Settings(fal_max_in_flight=7, post_concurrency=3, cloud_concurrency=128, gpu_concurrency=2)
    assert provider_cap("cloud", settings) == 7 and provider_cap("post", settings) is None
    assert configured_limits(settings)["cloud"] == 7, "one cloud worker's 128 threads, fal allows 7"
    assert configured_limits(settings)["post"] == 3
    note = announcement("cloud", 128, settings)
    assert (note.slots, note.cap, note.policy.order) == (128, 7, "critical_path")
