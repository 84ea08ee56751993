"""KuaiRand-Pure column names, action ids and fixed constants (docs/data.md, KuaiRand section)."""

from __future__ import annotations

DEFAULT_SURFACES: dict[int, str] = {1: "tab1", 0: "tab0", 4: "tab4", 6: "tab6", 2: "tab2"}
OTHER_SURFACE = "other"
VIEW_TYPES = ("organic", "random")
LABELS = ("is_click", "long_view", "is_like")
MISSING = -1

# Action ids of the sequence.
ACT_HIST_WATCH, ACT_HIST_LONG, ACT_HIST_LIKE = 0, 1, 2
ACT_CLICK, ACT_LONG_VIEW, ACT_LIKE, ACT_IMPRESSION = 3, 4, 5, 6
NUM_ACTIONS = 7
DURATION_BUCKETS_PER_LOG = 4  # duration_bucket = floor(4 * ln(1 + seconds))

LOG_COLUMNS = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "long_view",
    "is_like",
    "is_rand",
    "tab",
)
USER_STRING_COLUMNS = (
    "user_active_degree",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
)
USER_INT_COLUMNS = (
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    *(f"onehot_feat{i}" for i in range(18)),
)
USER_FEATURES = (
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)
VIDEO_COLUMNS = (
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "music_type",
    "tag",
    "video_duration",
)
HISTORY_COLUMNS = ("user_id", "history_len", "last_time_ms", "watch_seq", "long_watch_seq", "like_seq")
CAND_CAT = (
    "video_id",
    "author_id",
    "video_type",
    "upload_type",
    "music_type",
    "tag",
    "duration_bucket",
    "tab",
    "hour",
    "day_of_week",
)
# Counters of what happened before the request (log rows strictly earlier; history_len before the window).
USER_COUNTERS = (
    "user_history_watches",
    "user_history_long_views",
    "user_history_likes",
    "user_prior_impressions",
    "user_prior_clicks",
    "user_prior_long_views",
    "user_prior_likes",
)
VIDEO_COUNTERS = ("video_prior_impressions", "video_prior_clicks", "video_prior_long_views", "video_prior_likes")
CAND_DENSE = ("video_duration", "video_age_days", *VIDEO_COUNTERS)
SEQ_COLUMNS = ("seq_item", "seq_action", "seq_ts")
# Per-event side information: list column -> the candidate column (video attribute) it is looked up from.
SEQ_SIDE_COLUMNS = {"seq_author": "author_id", "seq_tag": "tag", "seq_duration": "duration_bucket"}

# Column order of the written Parquet.
OUTPUT_COLUMNS = (
    "request_id",
    "user_id",
    "timestamp",
    "surface",
    "view_type",
    *USER_FEATURES,
    *USER_COUNTERS,
    *CAND_CAT,
    *CAND_DENSE,
    *LABELS,
    *SEQ_COLUMNS,
    *SEQ_SIDE_COLUMNS,
)

