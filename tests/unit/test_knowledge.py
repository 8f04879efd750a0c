"""Item knowledge: the repaired ml-100k link, facts files, and the knowledge tower."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from peftrec.data import DataError, load_movielens
from peftrec.data.knowledge import (
    ItemKnowledge,
    load_item_knowledge,
    ml100k_kg_file,
    ml100k_knowledge,
    repaired_link,
)
from peftrec.models.knowledge_tower import ML100K_GROUPS, KnowledgeTower, KnowledgeVocabulary
from peftrec.tasks.rating.head import RatingHead


@pytest.fixture(scope="module")
def ml100k():
    try:
        dataset = load_movielens("ml-100k")
        ml100k_kg_file()
    except DataError as err:
        pytest.skip(f"ml-100k or its knowledge graph not available offline: {err}")
    return dataset


def words(title: str) -> set[str]:
    return {
        w for w in re.findall(r"[a-z0-9]+", title.lower()) if len(w) > 2 and w not in {"the", "and"}
    }


def test_the_repaired_link_maps_each_item_to_one_entity_and_sequels_share_title_words(ml100k):
    link = repaired_link()
    assert len(link) == 1532 and link["1"] == "m.0dyb1"  # Toy Story (1995)
    assert set(link) <= set(ml100k.item_ids)  # a dict: one entity per item
    titles = ml100k.item_fields["title"]
    by_entity: dict[str, list[int]] = {}
    for item, entity in link.items():
        by_entity.setdefault(entity, []).append(ml100k.item_ids.index(item))
    # only ml-100k's duplicated movies (one film under two ids) share an entity
    shared_entity = [items for items in by_entity.values() if len(items) > 1]
    assert len(shared_entity) < 20
    assert all(len({titles[i] for i in items}) == 1 for items in shared_entity)
    knowledge = ml100k_knowledge(ml100k.item_ids)
    facts = zip(knowledge.items, knowledge.relations, knowledge.entities, strict=True)
    pairs = {
        tuple(sorted((int(i), j)))
        for i, r, e in facts
        if r == "film.film.sequel"
        for j in by_entity.get(e, [])
    }
    shared = sum(bool(words(titles[a]) & words(titles[b])) for a, b in pairs)
    # 42 of 57 pairs share a title word with the repaired link; 0 with RecBole's
    assert len(pairs) >= 50 and shared >= 0.7 * len(pairs)
    trilogy = [ml100k.item_ids.index(i) for i in ("50", "172", "181")]  # Star Wars, Empire, Jedi
    assert "Star Wars" in titles[trilogy[0]] and "Empire" in titles[trilogy[1]]
    assert {tuple(sorted(p)) for p in ((trilogy[0], trilogy[1]), (trilogy[1], trilogy[2]))} <= pairs


def test_pre_release_facts_leave_out_awards(ml100k):
    knowledge = ml100k_knowledge(ml100k.item_ids)
    pre = knowledge.pre_release()
    assert any("award" in r for r in knowledge.relations) and not any(
        "award" in r for r in pre.relations
    )
    assert 0 < len(pre) < len(knowledge)


def test_recboles_shipped_link_is_refused(ml100k, tmp_path):
    shipped = ml100k_kg_file().with_name("ml-100k.link")  # fetched beside the graph
    copy = tmp_path / "my-links.tsv"
    shutil.copy(shipped, copy)
    with pytest.raises(
        DataError, match=r"RecBole's ml-100k\.link, keyed by MovieLens-1M movie ids"
    ):
        load_item_knowledge(copy, ml100k.item_ids)


def test_a_facts_file_is_validated_with_its_position(tmp_path):
    items = ["a", "b", "c"]
    good = tmp_path / "facts.csv"
    good.write_text("item_id,relation,entity\na,director,d1\nb,director,d1\nc,actor,x\n")
    knowledge = load_item_knowledge(good, items)
    assert knowledge.items.tolist() == [0, 1, 2] and knowledge.relations[2] == "actor"
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,relation,entity\na,director,d1\nzz,director,d2\n")
    with pytest.raises(
        DataError, match=r"bad\.csv, line 3.*column 'item_id': item id 'zz' is not in"
    ):
        load_item_knowledge(bad, items)
    empty = tmp_path / "empty.csv"
    empty.write_text("item_id,relation,entity\na,,d1\n")
    with pytest.raises(DataError, match=r"line 2.*column 'relation': empty relation id"):
        load_item_knowledge(empty, items)
    with pytest.raises(DataError, match=r"entity"):
        (tmp_path / "cols.csv").write_text("item_id,relation\na,b\n")
        load_item_knowledge(tmp_path / "cols.csv", items)


def toy_knowledge():
    # items 0, 1 share director d1 (trained), item 2 has a director only item 3 shares (not trained)
    return ItemKnowledge(
        np.array([0, 1, 2, 3, 0]),
        ["director", "director", "director", "director", "actor"],
        ["d1", "d1", "d9", "d9", "x"],
    )


def test_the_vocabulary_keeps_entities_shared_by_training_items():
    vocabulary = KnowledgeVocabulary.build(
        toy_knowledge(), train_items=np.array([0, 1, 0]), min_count=2
    )
    assert vocabulary.groups == ["actor", "director"] and vocabulary.entities == ["director\td1"]
    table = vocabulary.table(toy_knowledge(), 4)
    assert table.shape == (4, 2, vocabulary.width)
    assert table[0, 1, 0] == 0 and (table[2] == -1).all()  # d9 has no row: never in training
    assert ML100K_GROUPS["film.film.award_won"] == "award_won"


def test_the_tower_pools_entities_and_gives_missing_groups_their_own_row():
    torch.manual_seed(0)
    tower = KnowledgeTower(num_items=3, dim=4, num_groups=2, num_entities=2, width=2)
    tower.facts[0] = torch.tensor([[0, 1], [-1, -1]])  # two entities in group 0, none in group 1
    tower.facts[1] = torch.tensor([[1, -1], [0, -1]])
    vector, bias = tower(torch.tensor([0, 1, 2, -1]))
    e, none = tower.embedding.weight, tower.embedding.weight[2:]
    assert torch.allclose(vector[0], (e[0] + e[1]) / 2 + none[1])
    assert torch.allclose(vector[1], e[1] + e[0])
    assert torch.allclose(vector[2], none[0] + none[1]) and torch.allclose(vector[3], vector[2])
    explicit, _ = tower(None, tower.facts[[1]])
    assert torch.allclose(explicit[0], vector[1]) and bias.shape == (4,)


def test_a_head_with_knowledge_scores_new_items_from_their_facts():
    torch.manual_seed(0)
    head = RatingHead(8, 2, 3, 4, knowledge={"groups": 1, "entities": 2, "width": 2})
    head.knowledge.facts[0] = torch.tensor([[1, -1]])
    with torch.no_grad():
        head.knowledge.embedding.weight.normal_()
    text = torch.randn(1, 8)
    trained = head.items(text, torch.tensor([0]))
    as_new = head.items(text, torch.tensor([-1]), torch.tensor([[[1, -1]]]))
    no_facts = head.items(text, None)
    assert not torch.allclose(trained[0], no_facts[0])
    assert torch.allclose(as_new[0], trained[0] - head.item_emb.weight[0])  # the same facts, no ID
    assert head.knowledge_penalty() > 0
