from examples import imdb
imdb.main(use_dummy_data=True)
