//! The promises of ARCHITECTURE.md against the distributed topology (one
//! gateway, router and history, each through its distributed `run`, on the
//! real nisshi broker and a real PostgreSQL): the same suite as
//! `embedded.rs`. Durability across `kill -9` of the service processes is in
//! `distributed_durability.rs`.

mod suite;

use confab_tests::server::Kind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_one_gap_free_order_that_every_member_sees() {
    suite::concurrent_senders_get_one_gap_free_order_that_every_member_sees(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_returns_the_original_and_stores_nothing_twice() {
    suite::a_retried_send_returns_the_original_and_stores_nothing_twice(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_of_every_member_gets_the_message_sender_included() {
    suite::every_session_of_every_member_gets_the_message_sender_included(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_sends_exactly_what_was_missed_while_others_keep_sending() {
    suite::resume_sends_exactly_what_was_missed_while_others_keep_sending(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_the_largest_seq_is_caught_up_and_the_stream_goes_on() {
    suite::resuming_from_the_largest_seq_is_caught_up_and_the_stream_goes_on(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_sequenced_events_and_removal_stops_delivery() {
    suite::membership_changes_are_sequenced_events_and_removal_stops_delivery(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_added_members_stream_carries_what_their_history_shows() {
    suite::a_re_added_members_stream_carries_what_their_history_shows(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_conversations_are_unique_per_pair() {
    suite::direct_conversations_are_unique_per_pair(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_by_seq_in_both_directions() {
    suite::history_pages_by_seq_in_both_directions(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_disturb_nobody() {
    suite::bad_requests_get_precise_statuses_and_disturb_nobody(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_disconnected_and_can_resume() {
    suite::a_reader_that_falls_behind_is_disconnected_and_can_resume(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pages_are_cut_to_fit_and_page_on() {
    suite::large_pages_are_cut_to_fit_and_page_on(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_positions_count_exactly_and_receipts_reach_every_session() {
    suite::read_positions_count_exactly_and_receipts_reach_every_session(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_listed_newest_first_in_pages() {
    suite::conversations_are_listed_newest_first_in_pages(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_stream_merge_while_one_is_in_flight() {
    suite::reads_on_a_stream_merge_while_one_is_in_flight(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_reads_of_a_conversation_are_spaced_out() {
    suite::a_streams_reads_of_a_conversation_are_spaced_out(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typing_flood_is_held_back() {
    suite::a_typing_flood_is_held_back(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_members_and_ends_by_itself() {
    suite::typing_reaches_the_other_members_and_ends_by_itself(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_returns_exactly_what_changed_and_the_frame_goes_live() {
    suite::sync::a_cursor_returns_exactly_what_changed_and_the_frame_goes_live(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_partners_see_presence_without_flapping() {
    suite::presence::direct_partners_see_presence_without_flapping(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_live_streams_and_fold_into_the_history() {
    suite::changes::changes_reach_live_streams_and_fold_into_the_history(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_refused_precisely() {
    suite::changes::changes_are_refused_precisely(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_what_members_may_read() {
    suite::changes::search_finds_what_members_may_read(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_admins_manage_groups() {
    suite::changes::owners_and_admins_manage_groups(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_joined_members_resume_and_sync_only_what_they_may_read() {
    suite::changes::since_joined_members_resume_and_sync_only_what_they_may_read(Kind::Cluster)
        .await;
}
