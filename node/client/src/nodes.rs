//! Which URL is which node: node ids matched to the URLs a tool was given, from what each node
//! says about itself and advertises for the others in `/v1/cluster`, so `--target` may list
//! nodes in any order.

use crate::api::ClusterView;
use std::collections::BTreeMap;

/// Which of `urls` each node of a /v1/cluster view is, matched by the HTTP address the node
/// advertises: node id → index into `urls`. Nodes whose address matches no URL are left out.
pub fn match_advertised(view: &ClusterView, urls: &[String]) -> BTreeMap<u64, usize> {
    let mut matched = BTreeMap::new();
    for node in &view.nodes {
        let Some(http) = node.http_url() else {
            continue;
        };
        let http = http.trim_end_matches('/');
        if let Some(index) = urls.iter().position(|url| url.trim_end_matches('/') == http) {
            matched.insert(node.id, index);
        }
    }
    matched
}

/// The URL of every node id: a URL that answers /v1/cluster is the node it says it is
/// (`node`); one that does not is matched by the address the others advertise for it; one
/// still unmatched is taken to be node N when it is the N-th URL and no other URL is node N
/// (as in a local cluster, whose nodes are started in order).
pub async fn node_urls(client: &reqwest::Client, urls: &[String]) -> BTreeMap<u64, String> {
    let mut views = Vec::new();
    for url in urls {
        let view = match client.get(format!("{url}/v1/cluster")).send().await {
            Ok(response) => response.json::<ClusterView>().await.ok(),
            Err(_) => None,
        };
        views.push(view);
    }
    assign_node_urls(&views, urls)
}

/// `node_urls` on the views already read (`views[i]` is what `urls[i]` answered, if anything).
fn assign_node_urls(views: &[Option<ClusterView>], urls: &[String]) -> BTreeMap<u64, String> {
    let mut node_of: Vec<Option<u64>> = views.iter().map(|view| view.as_ref().map(|view| view.node)).collect();
    node_of.resize(urls.len(), None);
    for view in views.iter().flatten() {
        for (id, index) in match_advertised(view, urls) {
            if node_of[index].is_none() && !node_of.contains(&Some(id)) {
                node_of[index] = Some(id);
            }
        }
    }
    for index in 0..node_of.len() {
        let position = u64::try_from(index + 1).expect("few urls");
        if node_of[index].is_none() && !node_of.contains(&Some(position)) {
            node_of[index] = Some(position);
        }
    }
    node_of.iter().zip(urls).filter_map(|(id, url)| id.map(|id| (id, url.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeView;

    /// Node ids follow what the nodes say about themselves and advertise, not the order of the
    /// URLs; a URL nobody identifies falls back to its position.
    #[test]
    fn node_urls_follow_the_cluster_view_not_the_url_order() {
        let urls: Vec<String> = ["http://c:3", "http://a:1", "http://b:2"].iter().map(|url| url.to_string()).collect();
        let advertised = |id: u64, http: &str| NodeView { id, http: Some(Some(http.to_string())), ..NodeView::default() };
        let nodes = vec![advertised(1, "http://a:1"), advertised(2, "http://b:2/"), advertised(3, "http://c:3")];
        let view = |node: u64| Some(ClusterView { node, nodes: nodes.clone(), ..ClusterView::default() });
        let expected: BTreeMap<u64, String> =
            [(1, "http://a:1"), (2, "http://b:2"), (3, "http://c:3")].iter().map(|(id, url)| (*id, url.to_string())).collect();
        // Every node answers for itself.
        assert_eq!(assign_node_urls(&[view(3), view(1), view(2)], &urls), expected);
        // c is down: the others' views name it by its advertised address.
        assert_eq!(assign_node_urls(&[None, view(1), view(2)], &urls), expected);
        // Nothing advertised and nobody answers: position.
        let by_position: BTreeMap<u64, String> = urls.iter().enumerate().map(|(index, url)| (index as u64 + 1, url.clone())).collect();
        assert_eq!(assign_node_urls(&[None, None, None], &urls), by_position);
        let only_nodes = ClusterView { nodes: nodes.clone(), ..ClusterView::default() };
        assert_eq!(match_advertised(&only_nodes, &urls), [(1, 1), (2, 2), (3, 0)].into_iter().collect());
        // A node not yet introduced (`http` null) or without a link (absent) matches no URL.
        let unknown = ClusterView {
            nodes: vec![NodeView { id: 1, http: Some(None), ..NodeView::default() }, NodeView { id: 2, ..NodeView::default() }],
            ..ClusterView::default()
        };
        assert!(match_advertised(&unknown, &urls).is_empty());
    }
}
