import numpy as np

from offline.pipeline import last_of_each_user


def test_last_of_each_user_keeps_each_users_tail():
    users = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    assert last_of_each_user(users, 2).tolist() == [
        False,
        True,
        True,
        True,
        False,
        False,
        True,
        True,
    ]
    assert last_of_each_user(users, 10).all()
    assert last_of_each_user(np.array([], dtype=int), 3).tolist() == []
